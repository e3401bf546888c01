"""The batch's KV cache: one buffer per layer for every batched sequence, one attention call.

`EngineBatch` (batch.py) decodes B sequences a step. Each has its own length, so transformers'
DynamicCache (one length for the whole batch) cannot hold them together. Here each layer has
buffers (rows, KV heads, max_len, head dim) for keys and values, on that layer's device (a split
engine keeps its layers on several devices); each batched sequence owns a row, and in a step

    update(keys (B, kvh, 1, hd), values, layer)   writes row b's token at position[b], one
                                                  indexed write for all rows, and returns the
                                                  buffers of the B rows in use: (B, kvh, L, hd)
    mask(device)                                  (B, 1, 1, L) additive: 0 up to row b's own
                                                  position, -inf after it (stale or empty)

so one call of a layer's attention module serves the whole batch, as `StaticKV`
(compute/graphs.py) serves the segmented decoder's one sequence.

Rows 0..B-1 are the rows in use, in the order of the batch's hidden states: a step reads plain
views `keys[:B]`, no gather. A sequence that leaves frees its row at once; the last row moves
into the hole (a copy of one row), so the rows in use stay 0..B-1.

Size: the buffers grow when a step needs more rows or positions than they have (reallocated and
copied, to twice what is needed; positions to at most the longest prompt + max_new_tokens among
the rows), shrink when they have more than four times what is needed, and are dropped when no
row is in use; once a CUDA graph reads them (`keep`, a batched step recorded on a GPU) they only
grow, and stay, so the recorded steps stay valid (the bounds below hold until then). So, for B
rows in use whose longest needs N positions (its length + 1):

    bytes = 2 (keys, values) x layers x R x L x KV heads x head dim x bytes per number
    with B <= R <= 4 B and N <= L <= 4 N

(Qwen3-30B-A3B in bfloat16: 2 x 48 x 4 x 128 x 2 = 96 KiB per row and position.) The bookkeeping
(which owner holds which row, how big to grow) is plain Python; the tensors are all here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


class BatchKV:
    """Keys and values of the batched sequences: per layer (rows, KV heads, max_len, head dim).

    Quacks like a transformers cache for the attention modules (`update`, in inference mode
    like the buffers, which the other methods make and change in it). The batch calls
    `reserve` and `add` before a step for newcomers, `write` to copy their keys and values in,
    `prepare` with the rows' positions, then runs the layers; `read` and `release` when a
    sequence leaves the batched loop.
    """

    def __init__(self, devices: Sequence[torch.device], kv_heads: int, head_dim: int,
                 dtype: torch.dtype) -> None:  # fmt: skip
        self.devices = list(devices)  # per layer
        self.kv_heads, self.head_dim, self.dtype = kv_heads, head_dim, dtype
        self.owners: list[Hashable] = []  # row -> its owner (the batch's handle); rows 0..B-1
        self.keys: list[torch.Tensor] = []  # per layer (rows, kvh, max_len, hd); [] when empty
        self.values: list[torch.Tensor] = []
        self.n_rows = self.max_len = 0  # the buffers' size
        # True once a CUDA graph reads these buffers (EngineBatch._record): they only grow then,
        # and stay when no row is in use, so the graphs recorded on them stay valid
        self.keep = False
        # per device, set by prepare(): rows (B,) and positions (B,) for update(), mask (B,1,1,L)
        self._step: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    # -- bookkeeping -----------------------------------------------------------------------------
    def __contains__(self, owner: Hashable) -> bool:
        return owner in self.owners

    def __len__(self) -> int:
        return len(self.owners)  # rows in use

    @torch.inference_mode()
    def reserve(self, n_rows: int, length: int, cap: int | None = None) -> None:
        """Make room for `n_rows` rows of `length` positions (growing never past `cap` positions,
        the most any row will need); shrink buffers four times too big; drop them at 0 rows."""
        if n_rows < len(self.owners):
            raise ValueError(f"{n_rows} rows reserved, but {len(self.owners)} are in use")
        rows = _fitted(self.n_rows, n_rows)
        max_len = _fitted(self.max_len, length, cap)
        if self.keep:  # grow only
            rows, max_len = max(rows, self.n_rows), max(max_len, self.max_len)
        elif n_rows == 0:
            rows = max_len = 0
        if (rows, max_len) != (self.n_rows, self.max_len):
            self._resize(rows, max_len)

    def add(self, owner: Hashable) -> int:
        """Give `owner` the next free row (after `reserve` made room): its row index."""
        if owner in self.owners:
            raise ValueError(f"{owner!r} already has row {self.owners.index(owner)}")
        if len(self.owners) >= self.n_rows:
            raise RuntimeError(f"no free row of {self.n_rows}: reserve more rows first")
        self.owners.append(owner)
        return len(self.owners) - 1

    @torch.inference_mode()
    def release(self, owner: Hashable) -> None:
        """Free `owner`'s row (unknown owner: nothing to do): the last row moves into it, and the
        buffers go when no row is left."""
        if owner not in self.owners:
            return
        row, last = self.owners.index(owner), len(self.owners) - 1
        if row != last:
            for keys, values in zip(self.keys, self.values, strict=True):
                keys[row].copy_(keys[last])
                values[row].copy_(values[last])
            self.owners[row] = self.owners[last]
        self.owners.pop()
        if not self.owners and not self.keep:
            self._resize(0, 0)

    # -- copies in and out -----------------------------------------------------------------------
    @torch.inference_mode()
    def write(self, row: int, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
              length: int) -> None:  # fmt: skip
        """Copy positions 0..length-1 of one sequence's keys and values (per layer, (1, kvh,
        >= length, hd): a prefill DynamicCache's, the segmented decoder's) into `row`."""
        if length > self.max_len:
            raise ValueError(f"{length} positions do not fit max_len={self.max_len}: reserve first")
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            self.keys[i][row, :, :length].copy_(k[0, :, :length])
            self.values[i][row, :, :length].copy_(v[0, :, :length])

    def read(self, owner: Hashable, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Positions 0..length-1 of `owner`'s row, per layer: (keys, values) (1, kvh, length, hd)
        views into the buffers (copy them before the row is released)."""
        row = self.owners.index(owner)
        return [(k[row : row + 1, :, :length], v[row : row + 1, :, :length])
                for k, v in zip(self.keys, self.values, strict=True)]  # fmt: skip

    # -- one step --------------------------------------------------------------------------------
    @torch.inference_mode()
    def prepare(self, positions: Sequence[int]) -> None:
        """This step's position of each row in use (row order): where `update` writes, and the
        masks, once per device."""
        if len(positions) != len(self.owners):
            raise ValueError(f"{len(positions)} positions for {len(self.owners)} rows in use")
        if max(positions) >= self.max_len:
            raise ValueError(f"position {max(positions)} is past max_len={self.max_len}")
        self._step = {device: self._step_at(torch.tensor(positions, device=device))
                      for device in dict.fromkeys(self.devices)}  # fmt: skip

    def prepare_static(self, positions: torch.Tensor) -> None:
        """`prepare` from the rows' positions in a device tensor (B,), with no host values, so a
        CUDA graph can record it; every layer on that one device."""
        if set(self.devices) != {positions.device}:
            raise ValueError(f"prepare_static needs every layer on {positions.device}")
        self._step = {positions.device: self._step_at(positions)}

    def _step_at(self, at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, positions, mask) on the positions' device for the rows at positions `at` (B,):
        rows 0..B-1, and the (B, 1, 1, max_len) additive mask hiding each row's later positions."""
        device, n = at.device, at.shape[0]
        hidden = torch.arange(self.max_len, device=device)[None, :] > at[:, None]  # (B, L)
        mask = torch.zeros(hidden.shape, dtype=self.dtype, device=device)
        mask.masked_fill_(hidden, float("-inf"))
        return torch.arange(n, device=device), at, mask.view(n, 1, 1, self.max_len)

    def mask(self, device: torch.device) -> torch.Tensor:
        """(B, 1, 1, max_len) for the attention modules on `device`: 0 where row b may look (its
        positions 0..position[b]), -inf after."""
        return self._step[device][2]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """The new token's keys and values (B, kvh, 1, hd), written at each row's position: the
        buffers of the rows in use, (B, kvh, max_len, hd)."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        rows, at, _ = self._step[keys.device]
        keys[rows, :, at] = key_states[:, :, 0]  # keys[rows[b], :, at[b]] = key_states[b, :, 0]
        values[rows, :, at] = value_states[:, :, 0]
        n = len(self.owners)
        return keys[:n], values[:n]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys + self.values)  # bytes

    def _resize(self, n_rows: int, max_len: int) -> None:
        """New buffers (zeros: an empty position must be finite, since softmax multiplies it by 0)
        with the rows in use copied over."""
        keep_rows, keep_len = len(self.owners), min(self.max_len, max_len)
        keys, values = [], []
        for i, device in enumerate(self.devices if n_rows else ()):
            shape = (n_rows, self.kv_heads, max_len, self.head_dim)
            k = torch.zeros(shape, dtype=self.dtype, device=device)
            v = torch.zeros(shape, dtype=self.dtype, device=device)
            if keep_rows and self.keys:
                k[:keep_rows, :, :keep_len].copy_(self.keys[i][:keep_rows, :, :keep_len])
                v[:keep_rows, :, :keep_len].copy_(self.values[i][:keep_rows, :, :keep_len])
            keys.append(k)
            values.append(v)
        self.keys, self.values, self.n_rows, self.max_len = keys, values, n_rows, max_len


def _fitted(have: int, need: int, cap: int | None = None) -> int:
    """A buffer size for `need`: `have` while need <= have <= 4 need, else twice the need (at
    most `cap`, never below the need)."""
    if need <= have <= 4 * need:
        return have
    return max(need, min(2 * need, cap if cap is not None else 2 * need))
