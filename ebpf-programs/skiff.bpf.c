/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Skiff's data plane as one BPF object: every program file is included here so that all
 * programs of a node share one instance of each map (maps.h). One program per file:
 *   sock_lb.c       cgroup connect4 / sendmsg4 / recvmsg4 / getpeername4 (east-west)
 */
#include "sock_lb.c"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
