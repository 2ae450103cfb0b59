/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet parsing and rewriting shared by the XDP and TC programs, on direct packet
 * pointers (data, data_end). Every access is preceded by its bounds check. Anything the
 * parser does not understand (not IPv4, truncated, a non-first fragment, a protocol other
 * than TCP/UDP/ICMP) is reported as such and the caller lets it pass untouched.
 *
 * Checksums are updated incrementally (RFC 1624) over the bytes that change.
 */
#ifndef SKIFF_PACKET_H
#define SKIFF_PACKET_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* linux/icmp.h pulls in libc headers; the two fields we need are defined here. */
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11

struct icmp_hdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 rest;
};

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* A parsed IPv4 TCP/UDP packet: pointers into the packet and the flow's ports. */
struct flow {
	struct ethhdr *eth;
	struct iphdr *ip;
	void *l4;      /* TCP or UDP header */
	__u16 *l4csum; /* the L4 checksum field */
	__u16 sport;   /* network order */
	__u16 dport;   /* network order */
	__u8 proto;
	__u8 udp_zero_csum; /* UDP without a checksum: leave it at zero */
};

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IP,    /* not IPv4 (IPv6, ARP, ...) */
	PARSE_OTHER,     /* IPv4 we do not translate: other protocol, non-first fragment */
	PARSE_ICMP,      /* ICMP: the caller may look inside errors */
	PARSE_TRUNCATED, /* headers cut short */
};

static __always_inline int parse_flow(void *data, void *data_end, struct flow *f)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_TRUNCATED;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IP;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return PARSE_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_OTHER;
	__u32 ihl = ip->ihl * 4;
	/* IP options are skipped, never parsed: ihl bounds them. */
	void *l4 = (void *)ip + ihl;
	f->eth = eth;
	f->ip = ip;
	f->proto = ip->protocol;
	f->udp_zero_csum = 0;
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return PARSE_OTHER; /* a non-first fragment carries no ports */
	if (ip->protocol == IPPROTO_ICMP)
		return PARSE_ICMP;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return PARSE_TRUNCATED;
		f->l4 = tcp;
		f->l4csum = &tcp->check;
		f->sport = tcp->source;
		f->dport = tcp->dest;
		return PARSE_OK;
	}
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return PARSE_TRUNCATED;
		f->l4 = udp;
		f->l4csum = &udp->check;
		f->sport = udp->source;
		f->dport = udp->dest;
		f->udp_zero_csum = udp->check == 0;
		return PARSE_OK;
	}
	return PARSE_OTHER;
}

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), over 16-bit words. */
static __always_inline void csum_replace2(__u16 *csum, __u16 from, __u16 to)
{
	__u32 sum = (__u16)~*csum;
	sum += (__u16)~from;
	sum += to;
	*csum = ~csum_fold32(sum);
}

static __always_inline void csum_replace4(__u16 *csum, __u32 from, __u32 to)
{
	csum_replace2(csum, (__u16)(from >> 16), (__u16)(to >> 16));
	csum_replace2(csum, (__u16)from, (__u16)to);
}

/* A UDP checksum that computes to 0 is sent as 0xffff (0 means "no checksum"). */
static __always_inline void fix_udp_zero(struct flow *f)
{
	if (f->proto == IPPROTO_UDP && !f->udp_zero_csum && *f->l4csum == 0)
		*f->l4csum = 0xffff;
}

/* Rewrites the destination (address, port) of a parsed flow, fixing both checksums. */
static __always_inline void flow_set_dst(struct flow *f, __u32 addr, __u16 port)
{
	csum_replace4(&f->ip->check, f->ip->daddr, addr);
	if (!f->udp_zero_csum) {
		csum_replace4(f->l4csum, f->ip->daddr, addr);
		csum_replace2(f->l4csum, f->dport, port);
	}
	f->ip->daddr = addr;
	if (f->proto == IPPROTO_TCP)
		((struct tcphdr *)f->l4)->dest = port;
	else
		((struct udphdr *)f->l4)->dest = port;
	f->dport = port;
	fix_udp_zero(f);
}

/* Rewrites the source (address, port) of a parsed flow, fixing both checksums. */
static __always_inline void flow_set_src(struct flow *f, __u32 addr, __u16 port)
{
	csum_replace4(&f->ip->check, f->ip->saddr, addr);
	if (!f->udp_zero_csum) {
		csum_replace4(f->l4csum, f->ip->saddr, addr);
		csum_replace2(f->l4csum, f->sport, port);
	}
	f->ip->saddr = addr;
	if (f->proto == IPPROTO_TCP)
		((struct tcphdr *)f->l4)->source = port;
	else
		((struct udphdr *)f->l4)->source = port;
	f->sport = port;
	fix_udp_zero(f);
}

#endif /* SKIFF_PACKET_H */
