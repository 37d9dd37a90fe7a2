"""torchrun --nproc-per-node=2: does FlashInfer's workspace (cuMemCreate + handles exchanged
between the processes) map the peer's memory? Each rank fills its own part of the workspace,
then reads the peer's part through its own mapping."""

import os

import torch
import torch.distributed as dist

from moe_ext.comm import NvFp4AllToAll


def probe():
    """Print whether each rank reads its peers' workspace parts (group initialized)."""
    rank, ep = dist.get_rank(), dist.get_world_size()
    a2a = NvFp4AllToAll(None, 64, 8, 2048, 16, backend="flashinfer")
    from flashinfer.comm.mnnvl import MnnvlMemory

    handles = "FABRIC" if MnnvlMemory._fabric_supported else "POSIX file descriptors"
    ws = a2a._impl.workspace
    probe = ws[rank, -4096:]
    saved = probe.clone()
    probe.fill_(rank + 1)
    torch.cuda.synchronize()
    dist.barrier()
    seen = [int(ws[peer, -4096:].float().mean().item()) for peer in range(ep)]
    dist.barrier()
    probe.copy_(saved)
    torch.cuda.synchronize()
    dist.barrier()
    ok = seen == [p + 1 for p in range(ep)]
    print(f"probe rank {rank}: handles {handles}, workspace {tuple(ws.shape)} stride "
          f"{ws.stride()}, peer segments read {seen}: {'MAPPED' if ok else 'NOT MAPPED'}",
          flush=True)
    a2a.close()


def main():
    rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
    probe()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
