"""LB agent, NF service and the chain-replicated flow table they rely on."""
