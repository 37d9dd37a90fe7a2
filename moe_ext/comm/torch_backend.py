"""All-to-all over torch.distributed.all_to_all_single with equal padded splits (NCCL or gloo).

Every token becomes one packed byte row `[ids | weights | x_fp4 | x_scales]`; the send buffer is
`[ep, T_max, row]` (row `[d, j]` = j-th token of this rank that goes to rank d, in ascending
token order), so one collective moves everything and the receive buffer already has the shared
`[ep, T_max, *]` layout. Padding rows carry ids -1. No host synchronisation.
"""

import torch
import torch.distributed as dist

from ._layout import A2AConfig, DispatchResult, owner_table


def _round16(n: int) -> int:
    return (n + 15) // 16 * 16


class TorchAllToAll:
    def __init__(self, cfg: A2AConfig, group):
        self.cfg = cfg
        self.group = group
        k, h = cfg.top_k, cfg.hidden_size
        # Byte offsets of the four sections of a row, each 16-byte aligned.
        self.off_w = _round16(4 * k)
        self.off_x = self.off_w + _round16(4 * k)
        self.off_s = self.off_x + _round16(h // 2)
        self.row_bytes = self.off_s + _round16(h // 16)
        self.owners = owner_table(cfg.num_experts, cfg.ep, cfg.device)
        self._route = None  # (slot index [T, ep] into the [ep * T_max] rows, sent mask [T, ep])

    def _destinations(self, topk_ids: torch.Tensor, t_max: int):
        """sent [T, ep] bool: the token goes to rank d; row [T, ep]: its row in the send buffer."""
        cfg = self.cfg
        ids = topk_ids.long()
        valid = (ids >= 0) & (ids < cfg.num_experts)
        owner = torch.where(valid, self.owners[ids.clamp(0, cfg.num_experts - 1)], -1)
        ranks = torch.arange(cfg.ep, device=cfg.device)
        sent = (owner.unsqueeze(2) == ranks).any(1)  # [T, ep]
        slot = torch.cumsum(sent.int(), 0) - sent.int()  # position among the tokens sent to d
        row = ranks * t_max + slot
        # Rows not sent are written to a scratch row past the buffer's end.
        row = torch.where(sent, row, cfg.ep * t_max)
        return sent, row

    def dispatch(self, topk_ids, topk_weights, x_fp4, x_scales, t_max) -> DispatchResult:
        cfg = self.cfg
        t, k, h = topk_ids.shape[0], cfg.top_k, cfg.hidden_size
        packed = torch.zeros(t, self.row_bytes, dtype=torch.uint8, device=cfg.device)
        packed[:, : 4 * k] = topk_ids.contiguous().view(torch.uint8)
        packed[:, self.off_w : self.off_w + 4 * k] = topk_weights.contiguous().view(torch.uint8)
        packed[:, self.off_x : self.off_x + h // 2] = x_fp4
        packed[:, self.off_s : self.off_s + h // 16] = x_scales.contiguous().view(torch.uint8)

        send = torch.zeros(cfg.ep * t_max + 1, self.row_bytes, dtype=torch.uint8, device=cfg.device)
        send[:, : 4 * k] = 0xFF  # ids -1 on every row that receives no token
        sent, row = self._destinations(topk_ids, t_max)
        send.index_copy_(
            0, row.reshape(-1),
            packed.unsqueeze(1).expand(t, cfg.ep, self.row_bytes).reshape(-1, self.row_bytes),
        )
        recv = torch.empty(cfg.ep * t_max, self.row_bytes, dtype=torch.uint8, device=cfg.device)
        dist.all_to_all_single(recv, send[: cfg.ep * t_max], group=self.group)
        self._route = (sent, row)

        recv = recv.view(cfg.ep, t_max, self.row_bytes)

        def section(start, nbytes, dtype):
            return recv[:, :, start : start + nbytes].contiguous().view(dtype)

        return DispatchResult(
            x_fp4=section(self.off_x, h // 2, torch.uint8),
            x_scales=section(self.off_s, h // 16, torch.float8_e4m3fn),
            topk_ids=section(0, 4 * k, torch.int32),
            topk_weights=section(self.off_w, 4 * k, torch.float32),
        )

    def combine(self, expert_output, out, num_tokens, t_max):
        cfg = self.cfg
        sent, row = self._route
        self._route = None
        send = expert_output.contiguous()
        back = torch.empty_like(send)
        dist.all_to_all_single(back, send, group=self.group)
        rows = back.view(cfg.ep * t_max, cfg.hidden_size)
        # Sum in float32 over the ranks each token went to, in ascending rank order. Rows of
        # ranks a token did not go to are masked with where(), so garbage there (even NaN in
        # padding rows) never leaks in.
        total = torch.zeros(num_tokens, cfg.hidden_size, dtype=torch.float32, device=cfg.device)
        for d in range(cfg.ep):
            picked = rows[row[:, d].clamp(max=cfg.ep * t_max - 1)].float()
            total += torch.where(sent[:, d : d + 1], picked, 0.0)
        if out is None:
            return total.to(torch.bfloat16)
        out.copy_(total)
        return out

    def close(self):
        self._route = None
