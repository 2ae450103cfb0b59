/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Skiff's data-plane maps and the structs they hold, shared by every program.
 *
 * Addresses and ports are kept in network byte order everywhere, as the packet and the
 * socket hooks carry them, so that no program converts on the fast path.
 *
 * A service's backends are versioned: slots are keyed by (service id, generation, slot).
 * Userspace writes the slots of the next generation, then flips the service entry (one
 * atomic hash update that carries the new generation and count), then deletes the old
 * slots. A program therefore always sees either the old set or the new set, never an
 * empty or half-written one. The Rust mirrors of these structs live in
 * dataplane/src/maps.rs; a test checks their sizes and offsets against this file's BTF.
 */
#ifndef SKIFF_MAPS_H
#define SKIFF_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define SKIFF_MAX_SERVICES 65536
#define SKIFF_MAX_BACKENDS 65536
#define SKIFF_MAX_SLOTS (SKIFF_MAX_BACKENDS * 2)
#define SKIFF_SOCK_REVNAT_ENTRIES 262144
#define SKIFF_AFFINITY_ENTRIES 65536
#define SKIFF_SOCK_FLOW_ENTRIES 262144
#define SKIFF_CT_ENTRIES 524288
#define SKIFF_FRAG_ENTRIES 8192
#define SKIFF_LOCAL_PODS 4096
/* Maglev: a prime table size, and how many services can have tables (two each: the
 * generation in use and the next one). Userspace may lower the entries at load. */
#define SKIFF_MAGLEV_SIZE 16381
#define SKIFF_MAGLEV_SERVICES 64

/* svc_key.scope */
#define SVC_SCOPE_CLUSTER 0 /* ClusterIP (and every VIP reached from inside the node) */
#define SVC_SCOPE_NODEPORT 1 /* node address : NodePort, reached from outside */

/* svc_value.flags */
#define SVC_F_AFFINITY 0x1 /* sessionAffinity: ClientIP */

/* backend.flags */
#define BACKEND_F_TERMINATING 0x1 /* keeps existing flows, gets no new ones */

struct svc_key {
	__u32 addr;  /* VIP, network order */
	__u16 port;  /* network order */
	__u8 proto;  /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 scope;  /* SVC_SCOPE_* */
};

struct svc_value {
	__u32 id;               /* service id: index of counters, key of slots and affinity */
	__u16 count;            /* backends in the current generation; 0 = reject */
	__u16 generation;       /* generation of the slots in use */
	__u32 flags;            /* SVC_F_* */
	__u32 affinity_timeout; /* seconds */
	__u32 maglev;           /* 1 + index of the service's Maglev table pair; 0 = none */
};

struct slot_key {
	__u32 svc_id;
	__u16 generation;
	__u16 slot;
};

struct backend {
	__u32 addr; /* network order */
	__u16 port; /* network order */
	__u8 proto;
	__u8 flags; /* BACKEND_F_* */
};

/* Reverse translation for sockets: what a socket connected or sent to. */
struct sock_revnat_key {
	__u64 cookie; /* socket cookie */
	__u32 addr;   /* backend address */
	__u16 port;   /* backend port */
	__u16 pad;
};

struct sock_revnat_value {
	__u32 addr; /* service VIP */
	__u16 port; /* service port */
	__u16 pad;
};

/* An unconnected UDP socket's backend for a service address it sends to. */
struct sock_flow_value {
	__u32 backend_id;
	__u32 svc_id;
};

/* Session affinity: a client's backend for a service. */
struct affinity_key {
	__u64 client; /* netns cookie at the socket layer, client address on the wire */
	__u32 svc_id;
	__u32 pad;
};

struct affinity_value {
	__u64 last_used_ns; /* bpf_ktime_get_ns */
	__u32 backend_id;
	__u32 pad;
};

/* Conntrack, for the programs that translate packets (XDP, TC). */
#define CT_DIR_FORWARD 0 /* client -> service, as the client sent it */
#define CT_DIR_REPLY 1   /* backend -> client (or -> SNAT address), as the backend sends it */

struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir; /* CT_DIR_* */
	__u16 pad;
};

/*
 * Forward entry: `addr:port` is the backend (new destination); `addr2:port2` the SNAT
 * source, or 0 without SNAT. Reply entry: `addr:port` is the service (new source);
 * `addr2:port2` the client (new destination) when the flow was SNATed, else 0.
 */
struct ct_value {
	__u64 last_seen_ns; /* skiff_now(): CLOCK_MONOTONIC at tick resolution */
	__u32 backend_id;
	__u32 svc_id;
	__u32 addr;
	__u32 addr2;
	__u16 port;
	__u16 port2;
	__u32 pad;
};

/* Fragments after the first carry no ports: they follow the first one's translation. */
struct frag_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_value {
	__u32 saddr; /* new source */
	__u32 daddr; /* new destination */
};

/* This node, as the programs need it. One entry, written at start. */
struct node_config {
	__u32 addr;          /* the node's address on the uplink (NodePort, SNAT source) */
	__u32 pod_cidr;      /* this node's pod CIDR, network order */
	__u32 pod_cidr_mask; /* its mask, network order */
	__u32 flags;
};

/*
 * A pod on this node, by address (written by the agent when it plumbs the pod): XDP hands
 * a NodePort packet for it straight to the host side of its veth, without a FIB and
 * neighbour lookup per packet.
 */
struct local_pod {
	__u32 ifindex;     /* the host side of the pod's veth */
	__u8 mac[6];       /* the pod's eth0 */
	__u8 host_mac[6];  /* the host side */
};

/* Per-service counters, one per CPU. */
struct svc_stats {
	__u64 packets;
	__u64 bytes;
	__u64 connections;
};

/*
 * Not preallocated: an update then replaces the element under RCU, so a program that
 * looked the old one up keeps reading a consistent (old) value.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SKIFF_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} skiff_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SKIFF_MAX_SLOTS);
	__type(key, struct slot_key);
	__type(value, __u32); /* backend id */
} skiff_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SKIFF_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} skiff_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SKIFF_SOCK_REVNAT_ENTRIES);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_revnat_value);
} skiff_sock_revnat SEC(".maps");

/* Keyed by (socket cookie, service address, service port). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SKIFF_SOCK_FLOW_ENTRIES);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_flow_value);
} skiff_sock_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SKIFF_AFFINITY_ENTRIES);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
} skiff_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SKIFF_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct svc_stats);
} skiff_svc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SKIFF_CT_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
} skiff_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SKIFF_FRAG_ENTRIES);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
} skiff_frags SEC(".maps");

/* Maglev tables: entry (2 * (maglev - 1) + (generation & 1)) * SKIFF_MAGLEV_SIZE + h. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SKIFF_MAGLEV_SERVICES * 2 * SKIFF_MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32); /* backend id */
} skiff_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
} skiff_node SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SKIFF_LOCAL_PODS);
	__type(key, __u32); /* the pod's address, network order */
	__type(value, struct local_pod);
} skiff_local_pods SEC(".maps");

/*
 * The clock of conntrack's last-seen stamps: the coarse monotonic clock, read from the
 * timekeeper without a clock-source read (bpf_ktime_get_ns read the TSC on every packet:
 * ~5% of a forwarded packet's cost under a hypervisor). The stamps say when an entry was
 * last used and no program decides anything by them, so a tick's resolution is plenty.
 */
static __always_inline __u64 skiff_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

#endif /* SKIFF_MAPS_H */
