/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service lookup and backend selection, shared by the socket, TC and XDP programs.
 */
#ifndef SKIFF_LB_H
#define SKIFF_LB_H

#include "maps.h"

#define NSEC_PER_SEC 1000000000ULL

static __always_inline struct svc_value *lb_lookup_service(__u32 addr, __u16 port, __u8 proto,
							   __u8 scope)
{
	struct svc_key key = {
		.addr = addr,
		.port = port,
		.proto = proto,
		.scope = scope,
	};
	return bpf_map_lookup_elem(&skiff_services, &key);
}

static __always_inline struct backend *lb_backend_in_slot(const struct svc_value *svc, __u16 slot,
							  __u32 *backend_id)
{
	struct slot_key key = {
		.svc_id = svc->id,
		.generation = svc->generation,
		.slot = slot,
	};
	__u32 *id = bpf_map_lookup_elem(&skiff_slots, &key);
	if (!id)
		return 0;
	*backend_id = *id;
	return bpf_map_lookup_elem(&skiff_backends, id);
}

/*
 * The backend of a new flow of `svc` from `client` (a netns cookie or an address), chosen at
 * random among the service's slots, or the client's affinity backend while it is fresh.
 * `svc` was read once by the caller: the generation and count it carries belong together.
 * Returns 0 when the service has no usable backend.
 */
static __always_inline struct backend *lb_select_backend(const struct svc_value *svc, __u64 client,
							 __u32 *backend_id)
{
	struct affinity_key akey = {
		.client = client,
		.svc_id = svc->id,
	};
	__u64 now = 0;

	if (svc->count == 0)
		return 0;
	if (svc->flags & SVC_F_AFFINITY) {
		now = bpf_ktime_get_ns();
		struct affinity_value *a = bpf_map_lookup_elem(&skiff_affinity, &akey);
		if (a && now - a->last_used_ns < (__u64)svc->affinity_timeout * NSEC_PER_SEC) {
			__u32 id = a->backend_id;
			struct backend *b = bpf_map_lookup_elem(&skiff_backends, &id);
			if (b && !(b->flags & BACKEND_F_TERMINATING)) {
				a->last_used_ns = now;
				*backend_id = id;
				return b;
			}
		}
	}
	__u16 slot = bpf_get_prandom_u32() % svc->count;
	struct backend *b = lb_backend_in_slot(svc, slot, backend_id);
	if (b && (svc->flags & SVC_F_AFFINITY)) {
		struct affinity_value a = {
			.last_used_ns = now,
			.backend_id = *backend_id,
		};
		bpf_map_update_elem(&skiff_affinity, &akey, &a, BPF_ANY);
	}
	return b;
}

static __always_inline void lb_count(__u32 svc_id, __u64 packets, __u64 bytes, __u64 connections)
{
	struct svc_stats *s = bpf_map_lookup_elem(&skiff_svc_stats, &svc_id);
	if (!s)
		return;
	s->packets += packets;
	s->bytes += bytes;
	s->connections += connections;
}

#endif /* SKIFF_LB_H */
