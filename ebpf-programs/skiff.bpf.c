/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Skiff's data plane as one BPF object: every program file is included here so that all
 * programs of a node share one instance of each map (maps.h). One program per file:
 *   sock_lb.c       cgroup connect4 / sendmsg4 / recvmsg4 / getpeername4 (east-west)
 *   xdp_nodeport.c  XDP on the node uplink: NodePort with Maglev, conntrack, SNAT (north-south)
 *   tc_pod.c        TC on pod veths: reverse NAT, per-packet ClusterIP translation, counters
 *   xdp_pass.c      XDP_PASS for the far end of veths whose near end transmits with XDP
 */
#include "sock_lb.c"
#include "xdp_nodeport.c"
#include "tc_pod.c"
#include "xdp_pass.c"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
