/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * North-south: XDP on the node's uplink. A packet to node address:NodePort gets a backend
 * from the service's Maglev table (hash of the client's address, port and protocol, so
 * every node picks the same backend for a flow), a conntrack entry, and:
 *  - a backend on this node: destination rewritten and redirected into the pod's veth
 *    (found in skiff_local_pods, else by a FIB lookup, else passed to the stack, which
 *    routes it there); the pod's reply is reverse-translated by TC on its veth;
 *  - a backend on another node: source NATed to this node's address too, and sent back out
 *    with XDP_TX / redirect after a FIB lookup; its reply returns here and is translated back.
 * A service with no backend passes the packet to the stack, where nothing listens on the
 * NodePort: the client gets a TCP RST or an ICMP port unreachable, never silence.
 * Anything else passes untouched.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/ct.h"
#include "include/lb.h"
#include "include/packet.h"

#define AF_INET 2
#define SNAT_PORT_MIN 32768
#define SNAT_PORT_SPAN 28232 /* 32768 .. 60999, the default ephemeral range */
#define SNAT_TRIES 4

static __always_inline __u32 flow_hash(__u32 saddr, __u16 sport, __u8 proto)
{
	/* Every node must compute the same value: no per-boot seed. */
	__u32 h = saddr * 0x9e3779b1u;
	h ^= ((__u32)sport << 16 | proto) * 0x85ebca6bu;
	h ^= h >> 16;
	h *= 0xc2b2ae35u;
	h ^= h >> 13;
	return h;
}

static __always_inline struct node_config *node_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&skiff_node, &zero);
}

/*
 * One routed hop: the TTL decremented and the MACs rewritten. Non-zero when the TTL would
 * expire: the packet then goes to the stack, which sends the ICMP time exceeded.
 */
static __always_inline int xdp_hop(struct flow *f, const __u8 *dmac, const __u8 *smac)
{
	if (f->ip->ttl <= 1)
		return -1;
	csum_replace2(&f->ip->check, bpf_htons((__u16)f->ip->ttl << 8),
		      bpf_htons((__u16)(f->ip->ttl - 1) << 8));
	f->ip->ttl--;
	__builtin_memcpy(f->eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(f->eth->h_source, smac, ETH_ALEN);
	return 0;
}

/* Sends a rewritten packet towards its new destination. */
static __always_inline int xdp_forward(struct xdp_md *ctx, struct flow *f)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.ipv4_src = f->ip->saddr,
		.ipv4_dst = f->ip->daddr,
		.ifindex = ctx->ingress_ifindex,
		.l4_protocol = f->proto,
		.tot_len = bpf_ntohs(f->ip->tot_len),
	};
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS; /* let the stack resolve the neighbour and forward it */
	if (xdp_hop(f, fib.dmac, fib.smac))
		return XDP_PASS;
	if (fib.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib.ifindex, 0);
}

/* Hands a packet for a pod of this node straight to its veth (see local_pod). */
static __always_inline int xdp_to_pod(struct flow *f, const struct local_pod *pod)
{
	if (xdp_hop(f, pod->mac, pod->host_mac))
		return XDP_PASS;
	return bpf_redirect(pod->ifindex, 0);
}

static __always_inline void frag_remember(const struct flow *f, __u32 new_saddr, __u32 new_daddr)
{
	if (!(f->ip->frag_off & bpf_htons(IP_MF)))
		return;
	struct frag_key k = {
		.saddr = f->ip->saddr,
		.daddr = f->ip->daddr,
		.id = f->ip->id,
		.proto = f->proto,
	};
	struct frag_value v = {
		.saddr = new_saddr,
		.daddr = new_daddr,
	};
	bpf_map_update_elem(&skiff_frags, &k, &v, BPF_ANY);
}

/* A later fragment of a translated datagram: same addresses as its first fragment. */
static __always_inline int xdp_fragment(struct xdp_md *ctx, struct flow *f)
{
	struct frag_key k = {
		.saddr = f->ip->saddr,
		.daddr = f->ip->daddr,
		.id = f->ip->id,
		.proto = f->ip->protocol,
	};
	struct frag_value *v = bpf_map_lookup_elem(&skiff_frags, &k);
	if (!v)
		return XDP_PASS;
	__u32 saddr = v->saddr, daddr = v->daddr;
	csum_replace4(&f->ip->check, f->ip->saddr, saddr);
	csum_replace4(&f->ip->check, f->ip->daddr, daddr);
	int snat = saddr != f->ip->saddr;
	f->ip->saddr = saddr;
	f->ip->daddr = daddr;
	return snat ? xdp_forward(ctx, f) : XDP_PASS;
}

/* A reply from a backend on another node to a flow this node SNATed. */
static __always_inline int xdp_reply(struct xdp_md *ctx, struct flow *f, struct ct_value *ct)
{
	__u32 svc_addr = ct->addr, client = ct->addr2;
	__u16 svc_port = ct->port, client_port = ct->port2;
	__u32 svc_id = ct->svc_id;
	ct_touch(ct);
	__u16 len = bpf_ntohs(f->ip->tot_len);
	flow_set_src(f, svc_addr, svc_port);
	flow_set_dst(f, client, client_port);
	lb_count(svc_id, 1, len, 0);
	return xdp_forward(ctx, f);
}

/* Picks a source port for SNAT whose reply tuple is free (or already this flow's). */
static __always_inline int snat_port(const struct flow *f, __u32 node, __u32 b_addr, __u16 b_port,
				     __u16 *out)
{
	__u32 h = flow_hash(f->ip->saddr, f->sport, f->proto);
	for (int i = 0; i < SNAT_TRIES; i++) {
		__u16 port = i == 0 ? f->sport
				    : bpf_htons(SNAT_PORT_MIN + (h + i * 7919) % SNAT_PORT_SPAN);
		struct ct_key rev = {
			.saddr = b_addr,
			.daddr = node,
			.sport = b_port,
			.dport = port,
			.proto = f->proto,
			.dir = CT_DIR_REPLY,
		};
		struct ct_value *taken = bpf_map_lookup_elem(&skiff_ct, &rev);
		if (!taken || (taken->addr2 == f->ip->saddr && taken->port2 == f->sport)) {
			*out = port;
			return 0;
		}
	}
	return -1;
}

static __always_inline struct backend *maglev_backend(const struct svc_value *svc, __u32 hash,
						      __u32 *backend_id)
{
	if (svc->maglev == 0 || svc->maglev > SKIFF_MAGLEV_SERVICES)
		return 0;
	__u32 table = 2 * (svc->maglev - 1) + (svc->generation & 1);
	__u32 index = table * SKIFF_MAGLEV_SIZE + hash % SKIFF_MAGLEV_SIZE;
	__u32 *id = bpf_map_lookup_elem(&skiff_maglev, &index);
	if (!id || *id == 0)
		return 0;
	*backend_id = *id;
	return bpf_map_lookup_elem(&skiff_backends, id);
}

/* Translates an ICMP error about a translated flow, so that PMTU discovery and port
 * unreachables reach the side that sent the offending packet. */
static __always_inline int xdp_icmp_error(struct xdp_md *ctx, struct flow *f, void *data_end)
{
	struct icmp_hdr *icmp = (void *)f->ip + f->ip->ihl * 4;
	if ((void *)(icmp + 1) > data_end)
		return XDP_PASS;
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED)
		return XDP_PASS;
	struct iphdr *inner = (void *)(icmp + 1);
	if ((void *)(inner + 1) > data_end)
		return XDP_PASS;
	if (inner->ihl != 5 || (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP))
		return XDP_PASS;
	__u16 *ports = (void *)(inner + 1);
	if ((void *)(ports + 2) > data_end)
		return XDP_PASS;
	/* The inner packet is one we sent: its reply-direction tuple names our entry. */
	struct ct_key k = {
		.saddr = inner->daddr,
		.daddr = inner->saddr,
		.sport = ports[1],
		.dport = ports[0],
		.proto = inner->protocol,
		.dir = CT_DIR_REPLY,
	};
	struct ct_value *ct = bpf_map_lookup_elem(&skiff_ct, &k);
	if (!ct || !ct->addr2)
		return XDP_PASS; /* not about a flow this node SNATed */
	/* Inner: our SNATed forward packet (node:snat -> backend) becomes what the client
	 * sent (client:port -> service). The outer destination becomes the client. */
	__u32 client = ct->addr2, svc_addr = ct->addr;
	__u16 client_port = ct->port2, svc_port = ct->port;
	__u32 old_src = inner->saddr, old_dst = inner->daddr;
	__u16 old_sport = ports[0], old_dport = ports[1];
	/* The inner IP checksum absorbs its address changes (the header still sums to
	 * 0xffff), so the ICMP checksum only sees the port changes. The inner L4 checksum
	 * is not updated: an ICMP error quotes a truncated segment nobody verifies. */
	csum_replace4(&inner->check, old_src, client);
	csum_replace4(&inner->check, old_dst, svc_addr);
	csum_replace2(&icmp->checksum, old_sport, client_port);
	csum_replace2(&icmp->checksum, old_dport, svc_port);
	inner->saddr = client;
	inner->daddr = svc_addr;
	ports[0] = client_port;
	ports[1] = svc_port;
	csum_replace4(&f->ip->check, f->ip->daddr, client);
	f->ip->daddr = client;
	return xdp_forward(ctx, f);
}

SEC("xdp")
int skiff_xdp_nodeport(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct flow f = {};

	int parsed = parse_flow(data, data_end, &f);
	if (parsed == PARSE_ICMP)
		return xdp_icmp_error(ctx, &f, data_end);
	if (parsed == PARSE_OTHER && f.ip && (f.ip->frag_off & bpf_htons(IP_OFFSET)))
		return xdp_fragment(ctx, &f);
	if (parsed != PARSE_OK)
		return XDP_PASS;

	/* The service first: a packet to a NodePort (30000-32767) is never a reply to a flow
	 * this node translated (its SNAT ports are 32768-60999, and a reply to a pod goes to
	 * the pod's address), so the common case costs one conntrack lookup, not two. */
	struct svc_value *found = lb_lookup_service(f.ip->daddr, f.dport, f.proto, SVC_SCOPE_NODEPORT);
	if (!found) {
		struct ct_key rk = ct_reply_key(&f);
		struct ct_value *reply = bpf_map_lookup_elem(&skiff_ct, &rk);
		if (reply && reply->addr2)
			return xdp_reply(ctx, &f, reply);
		if (reply) {
			/* A remote backend answering a pod of this node that TC sent to it: the
			 * pod must see the service address. */
			ct_touch(reply);
			flow_set_src(&f, reply->addr, reply->port);
		}
		return XDP_PASS;
	}
	struct svc_value svc = *found;
	struct node_config *node = node_config();
	if (!node || !node->addr)
		return XDP_PASS;
	__u32 node_addr = node->addr, cidr = node->pod_cidr, mask = node->pod_cidr_mask;
	__u16 len = bpf_ntohs(f.ip->tot_len);

	__u32 backend_id = 0;
	struct backend *b = 0;
	__u32 snat = 0;
	__u16 sport = 0;
	int new_flow = 0;
	struct ct_value *ct = ct_live_forward(&f, svc.id, &b, &backend_id);
	if (ct) {
		snat = ct->addr2;
		sport = ct->port2;
	}
	if (!b) {
		if (svc.count == 0)
			return XDP_PASS; /* nothing listens on the NodePort: RST / port unreachable */
		/* ClientIP affinity: hash the client's address only, so every flow of a
		 * client lands on the same backend, on every node. */
		__u16 hashed_port = (svc.flags & SVC_F_AFFINITY) ? 0 : f.sport;
		b = maglev_backend(&svc, flow_hash(f.ip->saddr, hashed_port, f.proto), &backend_id);
		if (!b)
			return XDP_PASS;
		if ((b->addr & mask) != cidr) {
			snat = node_addr;
			if (snat_port(&f, node_addr, b->addr, b->port, &sport))
				return XDP_DROP; /* no free SNAT tuple; the client retries */
		}
		if (ct_create(&f, svc.id, backend_id, b->addr, b->port, snat, sport))
			return XDP_PASS;
		new_flow = 1;
	}
	__u32 b_addr = b->addr;
	__u16 b_port = b->port;
	frag_remember(&f, snat ? snat : f.ip->saddr, b_addr);
	flow_set_dst(&f, b_addr, b_port);
	lb_count(svc.id, 1, len, new_flow);
	if (snat)
		flow_set_src(&f, snat, sport);
	/* A pod of this node goes straight into its veth (podnet gives pods a NAPI context
	 * for that); other local backends follow the FIB, and so do remote ones. */
	if (!snat) {
		struct local_pod *pod = bpf_map_lookup_elem(&skiff_local_pods, &b_addr);
		if (pod)
			return xdp_to_pod(&f, pod);
	}
	return xdp_forward(ctx, &f);
}
