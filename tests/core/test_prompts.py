import numpy as np
import torch

from core.backbones import load_backbone
from core.config import BalmConfig
from core.data import load_data
from core.prompts import build_prompt_tokens, normalise, prompt_texts, window_statistics


def _per_row(x: np.ndarray) -> dict:
    """The straightforward computation, one window at a time, no FFT."""
    t = len(x)
    autocorr = np.array([np.dot(x, np.roll(x, -k)) for k in range(t)])  # circular, lag 0 included
    return {
        "min": x.min(),
        "max": x.max(),
        "median": np.sort(x)[(t - 1) // 2],  # torch's lower median
        "trend": "upward" if np.diff(x).sum() > 0 else "downward",
        "lags": set(np.argsort(-autocorr, kind="stable")[:5]),
        "autocorr": autocorr,
    }


def test_statistics_prompt_equals_a_per_row_computation(etth1_path):
    data = load_data(BalmConfig(data_path=str(etth1_path), seq_len=96, pred_len=24))
    index = torch.arange(0, len(data.train), 997)  # windows from every variable
    x, _, _ = normalise(data.train.inputs(index))
    stats = window_statistics(x)
    texts = prompt_texts(stats, decimals=2)
    reference_texts = prompt_texts(stats, decimals=None)
    for row, (window, text, full) in enumerate(zip(x.double().numpy(), texts, reference_texts, strict=True)):
        expected = _per_row(window)
        lags = stats.lags[row].tolist()
        # mirror lags (k, T-k) have equal autocorrelation: compare the top-5 values, then the set
        np.testing.assert_allclose(np.sort(expected["autocorr"][lags]), np.sort(expected["autocorr"])[-5:], rtol=1e-4)
        assert lags[0] == 0
        assert text == (
            f"min value {expected['min']:.2f}, max value {expected['max']:.2f}, "
            f"median value {expected['median']:.2f}, the trend of input is {expected['trend']}, "
            f"top 5 lags are : [{', '.join(map(str, lags))}], "
        )
        # the reference prints the float32 value with Python's full repr
        assert full.startswith(f"min value {float(np.float32(expected['min']))!r}, max value ")


def test_normalisation_is_revin_without_affine():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    norm, mean, std = normalise(x)
    assert torch.allclose(mean, torch.tensor([[3.0]]))
    assert torch.allclose(std, torch.sqrt(torch.tensor([[3.5 + 1e-5]])))  # population variance + 1e-5
    assert torch.allclose(norm * std + mean, x)


def test_prompts_are_tokenised_once_into_a_right_padded_table(etth1_path):
    backbone = load_backbone("tiny-gpt2", 2)
    data = load_data(BalmConfig(data_path=str(etth1_path), seq_len=96, pred_len=24, percent=5))
    tokens = build_prompt_tokens(data.train, backbone.tokenizer, decimals=2, chunk=1000)
    assert tokens.ids.shape[0] == len(data.train) and tokens.ids.dtype == torch.int32
    row = 1234
    x, _, _ = normalise(data.train.inputs(torch.tensor([row])))
    expected = backbone.tokenizer(prompt_texts(window_statistics(x), 2))["input_ids"][0]
    assert tokens.ids[row, : tokens.lengths[row]].tolist() == expected
    assert (tokens.ids[row, tokens.lengths[row] :] == backbone.tokenizer.pad_token_id).all()
    ids, lengths = tokens.batch(torch.tensor([row, 0]))
    assert ids.shape[1] == int(lengths.max())


def test_fewer_digits_mean_fewer_llm_tokens(etth1_path):
    backbone = load_backbone("tiny-gpt2", 2)
    data = load_data(BalmConfig(data_path=str(etth1_path), seq_len=96, pred_len=24, percent=5))
    short = build_prompt_tokens(data.train, backbone.tokenizer, decimals=2)
    full = build_prompt_tokens(data.train, backbone.tokenizer, decimals=None)
    assert short.lengths.float().mean() < 0.8 * full.lengths.float().mean()


def test_the_compact_style_carries_the_same_statistics_in_fewer_tokens(etth1_path):
    backbone = load_backbone("tiny-gpt2", 2)
    data = load_data(BalmConfig(data_path=str(etth1_path), seq_len=96, pred_len=24, percent=5))
    x, _, _ = normalise(data.train.inputs(torch.tensor([7])))
    stats = window_statistics(x)
    lags = " ".join(map(str, stats.lags[0].tolist()))
    trend = "upward" if stats.upward[0] else "downward"
    expected = (
        f"min {stats.minimum[0]:.2f} max {stats.maximum[0]:.2f} median {stats.median[0]:.2f} trend {trend} lags {lags}"
    )
    assert prompt_texts(stats, 2, style="compact") == [expected]
    compact = build_prompt_tokens(data.train, backbone.tokenizer, decimals=2, style="compact")
    reference = build_prompt_tokens(data.train, backbone.tokenizer, decimals=2, style="reference")
    assert compact.lengths.float().mean() < 0.6 * reference.lengths.float().mean()


def test_a_corrupt_prompt_cache_file_is_reported_in_one_line_and_rebuilt(etth1_path, tmp_path, monkeypatch, capsys):
    from core.prompts import cached_prompt_tokens

    monkeypatch.setenv("BALM_TUNE_CACHE", str(tmp_path))
    backbone = load_backbone("tiny-gpt2", 2)
    windows = load_data(BalmConfig(data_path=str(etth1_path), seq_len=96, pred_len=24, percent=5)).val

    def tokens():
        return cached_prompt_tokens(windows, "sha", backbone.tokenizer, backbone.tokenizer_id, 2, "compact")

    built = tokens()
    (cache_file,) = (tmp_path / "prompts").iterdir()
    whole = cache_file.read_bytes()
    capsys.readouterr()
    for damaged in (whole[:5000], b"garbage"):  # truncated, then not a torch file at all
        cache_file.write_bytes(damaged)
        rebuilt = tokens()
        err = capsys.readouterr().err
        assert f"prompt cache {cache_file} is unreadable" in err and "rebuilding it" in err and err.count("\n") == 1
        assert rebuilt.built and torch.equal(rebuilt.ids, built.ids)
        assert cache_file.read_bytes() == whole  # replaced: the next run reads it again
    tokens()
    assert capsys.readouterr().err == ""
