"""Token operations and attention helpers shared by every method (each respects ``num_prefix`` tokens)."""
from .attention import (
    attend, attention, attn_residual, class_attention, key_mask_bias, masked_softmax_attention, mlp_residual,
    project_kv, project_q, project_qkv, qkv_weight, run_attention, run_block,
)
from .rope import take_rope, with_synthetic
from .tokens import (
    fuse_tokens, gumbel_keep_decision, keep_mask, keep_tokens, kept_patches, num_kept, patch_scores_from_cls,
    rank_patches, split_prefix, take_rows, topk_keep_decision, topk_patches, with_prefix_mask,
)

__all__ = [
    "attend", "attention", "attn_residual", "class_attention", "fuse_tokens",
    "gumbel_keep_decision", "keep_mask", "keep_tokens", "kept_patches", "key_mask_bias", "masked_softmax_attention",
    "mlp_residual", "num_kept", "patch_scores_from_cls", "project_kv", "project_q", "project_qkv", "rank_patches",
    "qkv_weight", "run_attention", "run_block", "split_prefix", "take_rope", "take_rows", "topk_keep_decision",
    "topk_patches", "with_prefix_mask", "with_synthetic",
]
