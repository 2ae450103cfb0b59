/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The NodePort benchmark's traffic generator and sink (not part of the data plane).
 *
 * trafficgen: run with BPF_PROG_RUN in live-frames mode, it writes `frame` into each
 *   buffer (the kernel recycles buffers with whatever the path they took left in them:
 *   a decremented TTL, a translated address) and sends it out of `target_ifindex` (XDP
 *   redirect): a sender in the kernel that costs far less per packet than the path it
 *   measures, unlike a UDP socket on the same 2 cores.
 * sink: attached to the pod's interface on both sides of the comparison; counts the UDP
 *   datagrams that reached the pod and drops them (anything else, ARP above all, passes).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define FRAME_LEN 60

volatile const __u32 target_ifindex = 0;
volatile const __u8 frame[FRAME_LEN] = {0};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

SEC("xdp")
int trafficgen(struct xdp_md *ctx)
{
	__u8 *data = (__u8 *)(long)ctx->data;
	__u8 *end = (__u8 *)(long)ctx->data_end;

	if (data + FRAME_LEN > end)
		return XDP_ABORTED;
#pragma unroll
	for (int i = 0; i < FRAME_LEN; i++)
		data[i] = frame[i];
	return bpf_redirect(target_ifindex, 0);
}

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	__u8 *data = (__u8 *)(long)ctx->data;
	__u8 *end = (__u8 *)(long)ctx->data_end;
	__u32 key = 0;
	__u64 *n;

	/* Ethernet type IPv4 (bytes 12-13), IP protocol UDP (byte 14 + 9). */
	if (data + 34 > end || data[12] != 0x08 || data[13] != 0x00 || data[23] != 17)
		return XDP_PASS;
	n = bpf_map_lookup_elem(&sink_count, &key);
	if (n)
		*n += 1;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
