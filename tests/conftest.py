"""Shared test fixtures: the real data files beside the project and small real configs."""

from pathlib import Path

import pytest

from core.config import BalmConfig

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def etth1_path() -> Path:
    path = SHARED_DATA / "ETTh1.csv"
    assert path.is_file(), f"tests need ../shared/data beside the project ({path})"
    return path


@pytest.fixture
def tiny_config(etth1_path) -> BalmConfig:
    """A seconds-long real run: ETTh1, a 2-layer random GPT-2 with GPT-2's real tokenizer."""
    return BalmConfig(data_path=str(etth1_path), backbone="tiny-gpt2", llm_layers=2, seq_len=96, pred_len=24,
                      d_model=16, d_ff=32, batch_size=32, epochs=2, max_train_batches=4, max_eval_batches=2,
                      percent=10).validate()
