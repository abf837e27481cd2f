"""Can a small Qwen3-VL trained from random weights learn to *see* a synthetic world's anomalies? A status-only probe.

The three-stage experiment (``experiments/synthetic_three_stage.py``) trains the whole CaC answer (JSON, windows,
boxes) through the real recipes; when its status stays at chance, this probe separates the causes. It trains the same
architecture (:func:`cac_align.testing.tiny_qwen3vl_config`, hidden 128, 3 layers, a 2-block vision tower of width 64)
on one token only - the first token where `` normal`` and `` abnormal`` differ after the prompt - for videos of the
synthetic world rendered in memory at 4 fps (the turn-1 sampling of Sec. 3.4), and reports per epoch the training
loss and the ROC AUC and accuracy of the status logit on held-out videos (another seed)::

    python experiments/status_probe.py --kinds flicker                  # 400 + 100 videos, 15 epochs, about 2 min
    python experiments/status_probe.py --kinds all                      # the default world: stays at chance
    python experiments/status_probe.py --kinds flicker --long-prompt    # the real turn-1 prompt (~1K tokens), 10x slower
    python experiments/status_probe.py --cue                            # a white corner square marks abnormal videos
    python experiments/status_probe.py --kinds melt,notch --single-frame  # stage-1 style: one frame, shown twice
    python experiments/status_probe.py --kinds glitch --single-frame --salient --train 1000  # a single-frame kind it sees
    python experiments/status_probe.py --kinds flicker --salient --train 1000 --epochs 3  # the salient world

``--cue`` is the sanity check of the optimisation itself: the abnormal videos carry a trivially visible mark, so a
learner that misses it has an optimisation problem, not a data problem. The figures recorded in
``experiments/RESULTS.md`` (section "What a from-scratch model can see") come from these commands.
"""

import argparse
import time

import numpy as np
import torch

from cac_align.data.synthetic import render_frames, sample_video
from cac_align.eval.metrics import roc_auc
from cac_align.reward.chat import Turn, collate, encode_conversation, model_inputs
from cac_align.reward.prompts import turn1_prompt
from cac_align.reward.qwen import VIDEO_BLOCK, build_processor
from cac_align.testing import qwen3_tokenizer, tiny_qwen3vl_config
from cac_align.video import Sampled


def encode_world(processor, seed: int, n: int, args: argparse.Namespace) -> list[tuple[object, bool]]:
    """``n`` videos of world ``seed`` as encoded one-turn conversations whose answer is the status, and their labels."""
    kinds = None if args.kinds == "all" else args.kinds.split(",")
    out = []
    for i in range(n):
        v = sample_video(seed, i, (args.size, args.size), args.seconds, 16.0, kinds=kinds, salient=args.salient)
        frames = torch.from_numpy(render_frames(v.scene, v.defects)[::4]).permute(0, 3, 1, 2).float() / 255
        abnormal = v.annotation.is_abnormal
        if args.cue and abnormal:
            frames[:, :, :32, :32] = 1.0
        if args.single_frame:  # a frame inside the (first) anomaly window, or any frame of a normal video
            j = sum(v.annotation.anomalies[0].frames) // 2 if abnormal else i % frames.shape[0]
            frames = frames[j : j + 1].expand(2, -1, -1, -1).contiguous()
        video = Sampled(frames, torch.arange(frames.shape[0]) * 0.25, 16.0)
        prompt = turn1_prompt(v.annotation.prompt, frames.shape[0]) if args.long_prompt else VIDEO_BLOCK
        answer = " abnormal" if abnormal else " normal"
        out.append((encode_conversation(processor, [Turn(prompt + "\nStatus:", video, answer)]), abnormal))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", default="flicker", help="defect kinds, comma-separated, or 'all' (default flicker)")
    p.add_argument("--train", type=int, default=400, help="training videos (seed 0)")
    p.add_argument("--eval", type=int, default=100, help="held-out videos (seed 1)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=96, help="square frame size in pixels")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--salient", action="store_true", help="a salient world: large, full-strength anomalies")
    p.add_argument("--cue", action="store_true", help="mark abnormal videos with a white corner square")
    p.add_argument("--single-frame", action="store_true", help="one frame per video (stage-1 style)")
    p.add_argument("--long-prompt", action="store_true", help="the real turn-1 prompt instead of none")
    args = p.parse_args(argv)

    began = time.perf_counter()
    tok = qwen3_tokenizer("bpe")
    processor = build_processor(tok)
    train, held_out = encode_world(processor, 0, args.train, args), encode_world(processor, 1, args.eval, args)
    normal, abnormal = (tok(w, add_special_tokens=False)["input_ids"] for w in (" normal", " abnormal"))
    d = next(k for k in range(min(len(normal), len(abnormal))) if normal[k] != abnormal[k])
    config = tiny_qwen3vl_config(
        tok, hidden_size=128, num_layers=3, num_heads=4, vision_depth=2, vision_hidden_size=64
    )
    torch.manual_seed(0)
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)

    def status_logits(items) -> torch.Tensor:
        batch = collate([e for e, _ in items], tok.pad_token_id, "left")
        logits = model(**model_inputs(batch)).logits
        first = batch["assistant_mask"].float().argmax(1)  # the answer's first token
        return logits[torch.arange(len(items)), first - 1 + d]

    def evaluate(items) -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            lg = torch.cat([status_logits(items[k : k + 16]) for k in range(0, len(items), 16)])
        model.train()
        margin = (lg[:, normal[d]] - lg[:, abnormal[d]]).tolist()
        labels = [not a for _, a in items]
        return roc_auc(margin, labels), float(np.mean([(m > 0) == lab for m, lab in zip(margin, labels, strict=True)]))

    history = []
    for epoch in range(args.epochs):
        order = np.random.default_rng(epoch).permutation(len(train))
        losses = []
        for k in range(0, len(train), args.batch_size):
            items = [train[i] for i in order[k : k + args.batch_size]]
            target = torch.tensor([abnormal[d] if a else normal[d] for _, a in items])
            loss = torch.nn.functional.cross_entropy(status_logits(items), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        auc, acc = evaluate(held_out)
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "held_out_auc": auc, "held_out_acc": acc}
        history.append(row)
        print(
            f"epoch {epoch}: loss {row['loss']:.3f}, held-out AUC {auc:.3f}, accuracy {acc:.3f} "
            f"({time.perf_counter() - began:.0f} s)",
            flush=True,
        )
    return history


if __name__ == "__main__":
    main()
