"""A tiny random transformers Whisper (English-only) built locally, with Whisper tiny.en's own tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

MAX_NEW_TOKENS = 12  # random weights never stop by themselves: keep their transcripts short


def build_tiny_whisper(target: Path) -> Path:
    """Write a random WhisperForConditionalGeneration (seeded) and its processor to `target`, once."""
    if (target / "config.json").is_file():
        return target
    import torch
    from berth_server.models.wheel_weights import whisper_tiny_en_dir
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    tokenizer_dir = target / "_tokenizer"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(whisper_tiny_en_dir() / "tokenizer.json", tokenizer_dir / "tokenizer.json")
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_dir / "tokenizer.json"))
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=64, pad_token_id=50256, bos_token_id=50256,
        eos_token_id=50256, decoder_start_token_id=50257)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50256,
        no_timestamps_token_id=50362, is_multilingual=False, max_new_tokens=MAX_NEW_TOKENS,
        begin_suppress_tokens=[220, 50256], suppress_tokens=[])
    model.save_pretrained(str(target))
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(
        str(target))
    return target
