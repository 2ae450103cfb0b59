/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * TC on the host side of each pod's veth (ingress: packets leaving the pod).
 *  - Replies of translated flows get their source back: a pod that serves a NodePort flow
 *    from XDP, or a ClusterIP flow from the TC path below, answers from its own address;
 *    the client must see the service's.
 *  - Packets to a ClusterIP that the socket hooks did not translate (sockets created
 *    before the programs were attached, raw or forwarded traffic) are translated here per
 *    packet, with conntrack.
 *  - Per-service packet and byte counters.
 * Checksums are updated with the kernel helpers, which know whether the skb carries a full
 * or a partial (offloaded) checksum. Anything else passes untouched.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/ct.h"
#include "include/lb.h"
#include "include/packet.h"

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (IP_OFF + 10)
#define IP_SRC_OFF (IP_OFF + 12)
#define IP_DST_OFF (IP_OFF + 16)

/* Offsets of the fields a rewrite touches, computed before any helper invalidates the
 * packet pointers. */
struct l4_offsets {
	__u32 sport;
	__u32 dport;
	__u32 csum;
	__u64 csum_flags;
};

static __always_inline struct l4_offsets l4_offsets(const struct flow *f)
{
	__u32 l4 = IP_OFF + f->ip->ihl * 4;
	struct l4_offsets o = {
		.sport = l4,
		.dport = l4 + 2,
		.csum = l4 + (f->proto == IPPROTO_TCP ? 16 : 6),
		.csum_flags = f->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0,
	};
	return o;
}

static __always_inline int tc_rewrite(struct __sk_buff *skb, const struct l4_offsets *o,
				      __u32 addr_off, __u32 port_off, __u32 old_addr, __u32 new_addr,
				      __u16 old_port, __u16 new_port, int skip_l4_csum)
{
	if (!skip_l4_csum) {
		if (bpf_l4_csum_replace(skb, o->csum, old_addr, new_addr,
					BPF_F_PSEUDO_HDR | o->csum_flags | 4))
			return -1;
		if (bpf_l4_csum_replace(skb, o->csum, old_port, new_port, o->csum_flags | 2))
			return -1;
	}
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, 4))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0))
		return -1;
	return bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0);
}

SEC("classifier")
int skiff_tc_pod(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct flow f = {};

	if (parse_flow(data, data_end, &f) != PARSE_OK)
		return TC_ACT_OK;
	struct l4_offsets o = l4_offsets(&f);
	int zero_csum = f.udp_zero_csum;
	__u32 saddr = f.ip->saddr, daddr = f.ip->daddr;
	__u16 sport = f.sport, dport = f.dport;
	__u32 len = skb->len;

	/* A reply: the source becomes the service again. */
	struct ct_key rk = ct_reply_key(&f);
	struct ct_value *reply = bpf_map_lookup_elem(&skiff_ct, &rk);
	if (reply) {
		ct_touch(reply);
		__u32 svc_id = reply->svc_id, svc_addr = reply->addr;
		__u16 svc_port = reply->port;
		if (tc_rewrite(skb, &o, IP_SRC_OFF, o.sport, saddr, svc_addr, sport, svc_port,
			       zero_csum))
			return TC_ACT_SHOT;
		lb_count(svc_id, 1, len, 0);
		return TC_ACT_OK;
	}

	/* A ClusterIP the socket hooks did not translate. */
	struct svc_value *found = lb_lookup_service(daddr, dport, f.proto, SVC_SCOPE_CLUSTER);
	if (!found)
		return TC_ACT_OK;
	struct svc_value svc = *found;
	__u32 backend_id = 0;
	struct backend *b = 0;
	int new_flow = 0;
	ct_live_forward(&f, svc.id, &b, &backend_id);
	if (!b) {
		/* No backend: pass it on untranslated. The node routes the service CIDR to
		 * `unreachable`, so the pod gets an ICMP unreachable, not silence. */
		if (svc.count == 0)
			return TC_ACT_OK;
		b = lb_select_backend(&svc, saddr, &backend_id);
		if (!b)
			return TC_ACT_OK;
		if (ct_create(&f, svc.id, backend_id, b->addr, b->port, 0, 0))
			return TC_ACT_SHOT;
		new_flow = 1;
	}
	__u32 b_addr = b->addr;
	__u16 b_port = b->port;
	if (tc_rewrite(skb, &o, IP_DST_OFF, o.dport, daddr, b_addr, dport, b_port, zero_csum))
		return TC_ACT_SHOT;
	lb_count(svc.id, 1, len, new_flow);
	return TC_ACT_OK;
}
