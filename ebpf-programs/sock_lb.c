/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Socket-level load balancing (east-west): cgroup sock_addr hooks attached to a node's
 * cgroup2 subtree, so every socket of the node's pods is covered.
 *
 * - connect4: a TCP or connected-UDP socket aimed at a service gets a backend once, at
 *   connect(); the packets then flow between pod and backend untranslated.
 * - sendmsg4: unconnected UDP, translated per message; the socket keeps its backend while
 *   the reverse entry lives, so a UDP "flow" does not hop between backends.
 * - recvmsg4 / getpeername4: the socket sees the service address, never the backend's.
 *
 * A service with no backend rejects: connect() and sendmsg() fail with ECONNREFUSED (the
 * socket-level form of a TCP RST / ICMP port unreachable), nothing is black-holed.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "include/lb.h"

#define SOCK_ALLOW 1
#define SOCK_REJECT 0
#define ECONNREFUSED 111

static __always_inline __u16 ctx_port(const struct bpf_sock_addr *ctx)
{
	/* user_port holds the port in network order in its low 16 bits. */
	return (__u16)ctx->user_port;
}

/*
 * Translates the destination in `ctx` if it is a service. Returns SOCK_REJECT (with the
 * error set) for a service without backends.
 */
static __always_inline int sock_translate(struct bpf_sock_addr *ctx, int is_connect)
{
	__u8 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SOCK_ALLOW;
	__u32 vip = ctx->user_ip4;
	__u16 vport = ctx_port(ctx);

	struct svc_value *found = lb_lookup_service(vip, vport, proto, SVC_SCOPE_CLUSTER);
	if (!found)
		return SOCK_ALLOW; /* not a service: one map lookup, nothing else */
	struct svc_value svc = *found;
	__u64 cookie = bpf_get_socket_cookie(ctx);

	__u32 backend_id = 0;
	struct backend *b = 0;
	struct sock_revnat_key fkey = {
		.cookie = cookie,
		.addr = vip,
		.port = vport,
	};
	if (!is_connect) {
		/* An unconnected socket keeps the backend its earlier messages went to, even
		 * while that backend terminates, until the backend is gone. */
		struct sock_flow_value *flow = bpf_map_lookup_elem(&skiff_sock_flows, &fkey);
		if (flow && flow->svc_id == svc.id) {
			backend_id = flow->backend_id;
			b = bpf_map_lookup_elem(&skiff_backends, &backend_id);
		}
		if (b)
			goto translate;
	}
	if (svc.count == 0) {
		bpf_set_retval(-ECONNREFUSED);
		return SOCK_REJECT;
	}
	b = lb_select_backend(&svc, bpf_get_netns_cookie(ctx), &backend_id);
	if (!b) {
		/* The slots changed under us (a generation flip): read the service again. */
		found = lb_lookup_service(vip, vport, proto, SVC_SCOPE_CLUSTER);
		if (!found)
			return SOCK_ALLOW;
		svc = *found;
		b = lb_select_backend(&svc, bpf_get_netns_cookie(ctx), &backend_id);
		if (!b) {
			bpf_set_retval(-ECONNREFUSED);
			return SOCK_REJECT;
		}
	}

	if (!is_connect) {
		struct sock_flow_value flow = {
			.backend_id = backend_id,
			.svc_id = svc.id,
		};
		bpf_map_update_elem(&skiff_sock_flows, &fkey, &flow, BPF_ANY);
	}
translate:;
	struct sock_revnat_key rkey = {
		.cookie = cookie,
		.addr = b->addr,
		.port = b->port,
	};
	struct sock_revnat_value rval = {
		.addr = vip,
		.port = vport,
	};
	bpf_map_update_elem(&skiff_sock_revnat, &rkey, &rval, BPF_ANY);

	ctx->user_ip4 = b->addr;
	ctx->user_port = (__u32)b->port;
	lb_count(svc.id, 0, 0, is_connect);
	return SOCK_ALLOW;
}

SEC("cgroup/connect4")
int skiff_connect4(struct bpf_sock_addr *ctx)
{
	return sock_translate(ctx, 1);
}

SEC("cgroup/sendmsg4")
int skiff_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_translate(ctx, 0);
}

/* Replies and getpeername(): the backend's address becomes the service's again. */
static __always_inline void sock_reverse(struct bpf_sock_addr *ctx)
{
	struct sock_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = ctx_port(ctx),
	};
	struct sock_revnat_value *v = bpf_map_lookup_elem(&skiff_sock_revnat, &rkey);
	if (!v)
		return;
	ctx->user_ip4 = v->addr;
	ctx->user_port = (__u32)v->port;
}

SEC("cgroup/recvmsg4")
int skiff_recvmsg4(struct bpf_sock_addr *ctx)
{
	sock_reverse(ctx);
	return SOCK_ALLOW;
}

SEC("cgroup/getpeername4")
int skiff_getpeername4(struct bpf_sock_addr *ctx)
{
	sock_reverse(ctx);
	return SOCK_ALLOW;
}
