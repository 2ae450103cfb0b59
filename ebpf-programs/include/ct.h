/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Conntrack for translated flows: one forward entry (the tuple the client sends) and one
 * reply entry (the tuple the backend answers with), created together. The service id is
 * part of the value and the backend is re-checked on every hit, so a flow whose backend
 * was removed is dropped from conntrack and chosen again.
 */
#ifndef SKIFF_CT_H
#define SKIFF_CT_H

#include "maps.h"
#include "packet.h"

/* Stamps a hit, writing the entry only when the (coarse) clock moved on. */
static __always_inline void ct_touch(struct ct_value *ct)
{
	__u64 now = skiff_now();
	if (ct->last_seen_ns != now)
		ct->last_seen_ns = now;
}

static __always_inline struct ct_key ct_forward_key(const struct flow *f)
{
	struct ct_key k = {
		.saddr = f->ip->saddr,
		.daddr = f->ip->daddr,
		.sport = f->sport,
		.dport = f->dport,
		.proto = f->proto,
		.dir = CT_DIR_FORWARD,
	};
	return k;
}

static __always_inline struct ct_key ct_reply_key(const struct flow *f)
{
	struct ct_key k = ct_forward_key(f);
	k.dir = CT_DIR_REPLY;
	return k;
}

/*
 * The forward entry of `f` for service `svc_id` and its backend, if both are still there
 * and the backend still has the address the entry translated to (an id is never reused
 * for another backend while its flows live, but a removed backend's id may be gone).
 */
static __always_inline struct ct_value *ct_live_forward(const struct flow *f, __u32 svc_id,
							 struct backend **b, __u32 *backend_id)
{
	struct ct_key fk = ct_forward_key(f);
	struct ct_value *ct = bpf_map_lookup_elem(&skiff_ct, &fk);
	if (!ct || ct->svc_id != svc_id)
		return 0;
	*backend_id = ct->backend_id;
	*b = bpf_map_lookup_elem(&skiff_backends, backend_id);
	if (!*b || (*b)->addr != ct->addr || (*b)->port != ct->port) {
		*b = 0;
		return 0;
	}
	ct_touch(ct);
	return ct;
}

/*
 * Records a translated flow. `f` is the packet before translation, going to backend
 * `b_addr:b_port`, with source rewritten to `snat_addr:snat_port` (0 = not rewritten).
 */
static __always_inline int ct_create(const struct flow *f, __u32 svc_id, __u32 backend_id,
				     __u32 b_addr, __u16 b_port, __u32 snat_addr, __u16 snat_port)
{
	__u64 now = skiff_now();
	struct ct_key fwd = ct_forward_key(f);
	struct ct_value fv = {
		.last_seen_ns = now,
		.backend_id = backend_id,
		.svc_id = svc_id,
		.addr = b_addr,
		.port = b_port,
		.addr2 = snat_addr,
		.port2 = snat_port,
	};
	struct ct_key rev = {
		.saddr = b_addr,
		.daddr = snat_addr ? snat_addr : f->ip->saddr,
		.sport = b_port,
		.dport = snat_addr ? snat_port : f->sport,
		.proto = f->proto,
		.dir = CT_DIR_REPLY,
	};
	struct ct_value rv = {
		.last_seen_ns = now,
		.backend_id = backend_id,
		.svc_id = svc_id,
		.addr = f->ip->daddr,
		.port = f->dport,
		.addr2 = snat_addr ? f->ip->saddr : 0,
		.port2 = snat_addr ? f->sport : 0,
	};
	if (bpf_map_update_elem(&skiff_ct, &rev, &rv, BPF_ANY))
		return -1;
	return bpf_map_update_elem(&skiff_ct, &fwd, &fv, BPF_ANY);
}

#endif /* SKIFF_CT_H */
