// SPDX-License-Identifier: GPL-2.0
/* chainlb's in-kernel fast path: an XDP program on an LB host's data interface.
 *
 * A packet of a connection the agent put in the map ``conns`` (its key as agents/keys.py
 * builds it: proto, then the two endpoints in ascending order) leaves again at once
 * (XDP_TX) with the Ethernet addresses the entry holds (the NF's MAC, then the LB's own);
 * the entry's last-seen time and counters are updated, for the agent's idle timeouts.
 * Everything else goes on to the agent (XDP_PASS): misses, non-IPv4 frames (the chain
 * protocol's), IP options, fragments, protocols other than TCP and UDP (ICMP errors among
 * them), and TCP segments with SYN, FIN or RST, which the agent's connection tracking sees.
 *
 * Built by scripts/setup.sh:  clang -O2 -g -target bpf -c fastpath.bpf.c
 * Loaded by agents/fastpath.py (libbpf), attached through a BPF link the agent holds: when
 * the agent exits, however it exits, the program is detached and nothing stale forwards.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct key {                    /* agents/keys.py's IPv4 key: 13 bytes, big-endian */
	__u8 proto;
	__u8 lo_ip[4];
	__u8 lo_port[2];
	__u8 hi_ip[4];
	__u8 hi_port[2];
} __attribute__((packed));

struct entry {                  /* agents/fastpath.py ENTRY */
	__u8 eth[12];           /* destination MAC (the NF's), source MAC (this LB's) */
	__u32 pad;
	__u64 seen_ns;          /* bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last packet */
	__u64 packets;
	__u64 bytes;
};

enum { STAT_TX, STAT_PASS, STAT_MISS, STATS };   /* agents/fastpath.py STATS */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct key);
	__type(value, struct entry);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STATS);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline int count(__u32 which, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &which);

	if (n)
		*n += 1;
	return verdict;
}

SEC("xdp")
int chainlb_fastpath(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u8 *ports;
	struct key k;
	struct entry *e;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return count(STAT_PASS, XDP_PASS);
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->frag_off & bpf_htons(0x3FFF))
		return count(STAT_PASS, XDP_PASS);
	ports = (void *)(ip + 1);
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = (void *)ports;

		if ((void *)(th + 1) > end || th->syn || th->fin || th->rst)
			return count(STAT_PASS, XDP_PASS);
	} else if (ip->protocol == IPPROTO_UDP) {
		if ((void *)(ports + 8) > end)
			return count(STAT_PASS, XDP_PASS);
	} else {
		return count(STAT_PASS, XDP_PASS);
	}
	/* ascending endpoints: (address, port) as big-endian numbers, as agents/keys.py */
	__u32 src = bpf_ntohl(ip->saddr), dst = bpf_ntohl(ip->daddr);
	__u16 sport = (ports[0] << 8) | ports[1], dport = (ports[2] << 8) | ports[3];
	__u8 *lo_ip = (__u8 *)&ip->saddr, *hi_ip = (__u8 *)&ip->daddr;
	__u8 *lo_port = ports, *hi_port = ports + 2;

	if (!(src < dst || (src == dst && sport <= dport))) {
		lo_ip = (__u8 *)&ip->daddr;
		hi_ip = (__u8 *)&ip->saddr;
		lo_port = ports + 2;
		hi_port = ports;
	}
	k.proto = ip->protocol;
	__builtin_memcpy(k.lo_ip, lo_ip, 4);
	__builtin_memcpy(k.lo_port, lo_port, 2);
	__builtin_memcpy(k.hi_ip, hi_ip, 4);
	__builtin_memcpy(k.hi_port, hi_port, 2);
	e = bpf_map_lookup_elem(&conns, &k);
	if (!e)
		return count(STAT_MISS, XDP_PASS);
	__builtin_memcpy(data, e->eth, 12);
	e->seen_ns = bpf_ktime_get_ns();
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, end - data);
	return count(STAT_TX, XDP_TX);
}

char LICENSE[] SEC("license") = "GPL";
