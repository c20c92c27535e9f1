"""The Mininet testbed: one OVS gateway switch, clients, servers, LB hosts and NF hosts."""
