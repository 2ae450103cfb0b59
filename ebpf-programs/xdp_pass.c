/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Passes every frame. Attached to the far end of a veth whose near end runs XDP that may
 * XDP_TX / redirect: a veth delivers XDP frames only to a peer that runs XDP itself.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int skiff_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
