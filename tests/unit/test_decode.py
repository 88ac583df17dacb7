"""Decoding real recordings and PyAV transcodes of them to 16 kHz PCM."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from streams.decode import SAMPLE_RATE, decode, decode_sync, decode_to_files
from streams.encode import encode_data_uri, encode_flac
from streams.errors import AudioTooLong, UndecodableAudio
from tests.audio import FORMATS, asset, make_format, manifest, video_only


@pytest.mark.parametrize("name", sorted(manifest()), ids=lambda n: n.split("_")[0] + "-" + n[-4:])
def test_shared_recordings_decode_to_their_length(name: str) -> None:
    """Every shared recording decodes to mono 16 kHz int16 of the length the manifest gives."""
    audio = decode_sync(asset(name))
    entry = manifest()[name]
    assert audio.sample_rate == SAMPLE_RATE
    assert len(audio.channels) == 1
    assert audio.channels[0].dtype == np.int16
    assert audio.duration_s == pytest.approx(float(entry["duration_s"]), abs=0.02)
    assert audio.source_channels == entry["channels"]
    assert audio.source_sample_rate == entry["sample_rate"]


def test_split_keeps_each_channel() -> None:
    """A stereo call split into channels gives two different signals of equal length."""
    audio = decode_sync(asset("en_fasterwhisper_stereo_diarization_LR.wav"), layout="split")
    left, right = audio.channels
    assert len(left) == len(right) == 5 * SAMPLE_RATE
    assert not np.array_equal(left, right)


def test_resampling_keeps_the_signal(tmp_path: Path) -> None:
    """The 44.1 kHz flac resampled to 16 kHz keeps the energy of its speech."""
    audio = decode_sync(asset("en_whisper_jfk_stereo44k24bit.flac"))
    rms = float(np.sqrt(np.mean(audio.channels[0].astype(np.float64) ** 2)))
    assert rms > 300


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_decodes_to_the_same_speech(tmp_path: Path, name: str) -> None:
    """Each listed format of a real recording decodes to 16 kHz mono of its length and level."""
    source = asset("en_speechbrain_harvard_birch_canoe.wav")
    reference = decode_sync(source).channels[0].astype(np.float64)
    audio = decode_sync(make_format(source, tmp_path, name))
    assert audio.sample_rate == SAMPLE_RATE
    assert len(audio.channels) == 1
    # Codec padding and priming shift the ends by a few codec frames at most.
    assert audio.duration_s == pytest.approx(len(reference) / SAMPLE_RATE, abs=0.1)
    rms = float(np.sqrt(np.mean(audio.channels[0].astype(np.float64) ** 2)))
    assert rms == pytest.approx(float(np.sqrt(np.mean(reference**2))), rel=0.3)


def test_a_video_without_audio_fails_with_its_own_code(tmp_path: Path) -> None:
    """A video file with no audio stream is ``no_audio_stream``, not undecodable."""
    with pytest.raises(UndecodableAudio) as caught:
        decode_sync(video_only(tmp_path / "screen.mp4"))
    assert caught.value.code == "no_audio_stream"


def test_video_containers_give_their_first_audio_stream(tmp_path: Path) -> None:
    """An mp4 with video in front of the audio decodes its audio."""
    path = make_format(asset("de_picovoice_leopard_test_de.wav"), tmp_path, "mp4")
    assert decode_sync(path).duration_s == pytest.approx(5.256, abs=0.1)


@pytest.mark.parametrize("layout", ["mix", "split"])
def test_spooled_decode_matches_the_in_memory_one(tmp_path: Path, layout: str) -> None:
    """Per-channel files hold exactly the samples decode_sync returns, and every block is seen."""
    path = make_format(
        asset("en_fasterwhisper_stereo_diarization_LR.wav"), tmp_path, "ulaw-8k-stereo"
    )
    seen: list[np.ndarray] = []
    spooled = decode_to_files(path, tmp_path, layout=layout, on_block=seen.append)  # type: ignore[arg-type]
    memory = decode_sync(path, layout=layout)  # type: ignore[arg-type]
    assert len(spooled.paths) == len(memory.channels) == (2 if layout == "split" else 1)
    assert spooled.samples == len(memory.channels[0])
    for channel, pcm in enumerate(memory.channels):
        assert np.array_equal(spooled.read(channel, 0, spooled.samples), pcm)
        assert np.array_equal(spooled.read(channel, 1000, 2000), pcm[1000:2000])
        assert np.array_equal(np.concatenate([b[channel] for b in seen]), pcm)
    assert max(b.shape[1] for b in seen) <= 2 * SAMPLE_RATE


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param(b"this is text, not audio\n" * 100, "undecodable_audio", id="text"),
        pytest.param(b"", "undecodable_audio", id="empty-file"),
        pytest.param(b"RIFF\x24\x00\x00\x00WAVEfmt ", "undecodable_audio", id="truncated-header"),
    ],
)
def test_bytes_that_are_not_audio_raise_undecodable(
    tmp_path: Path, payload: bytes, code: str
) -> None:
    """Bytes PyAV cannot read raise UndecodableAudio with a stable code, not an FFmpeg error."""
    path = tmp_path / "call.wav"
    path.write_bytes(payload)
    with pytest.raises(UndecodableAudio) as caught:
        decode_sync(path)
    assert caught.value.code == code


def test_a_wav_without_samples_is_empty_audio(tmp_path: Path) -> None:
    """A valid WAV header with no samples is reported as empty audio."""
    source = asset("en_speechbrain_harvard_birch_canoe.wav").read_bytes()
    header = bytearray(source[:44])
    header[40:44] = (0).to_bytes(4, "little")
    path = tmp_path / "empty.wav"
    path.write_bytes(bytes(header))
    with pytest.raises(UndecodableAudio) as caught:
        decode_sync(path)
    assert caught.value.code == "empty_audio"


def test_longer_than_the_cap_raises_audio_too_long() -> None:
    """A recording longer than max_duration_s is refused with AudioTooLong."""
    with pytest.raises(AudioTooLong):
        decode_sync(asset("en_whisper_jfk_stereo44k24bit.flac"), max_duration_s=5)


async def test_async_decode_matches_sync() -> None:
    """The threaded decode returns the same samples as the synchronous one."""
    path = asset("de_picovoice_leopard_test_de.wav")
    assert np.array_equal((await decode(path)).channels[0], decode_sync(path).channels[0])


def test_flac_data_uri_is_lossless() -> None:
    """Encoding PCM as FLAC and decoding it again gives back the very same samples."""
    pcm = decode_sync(asset("en_whisper_jfk_stereo44k24bit.flac")).channels[0]
    flac = encode_flac(pcm, SAMPLE_RATE)
    assert len(flac) < pcm.nbytes * 0.75
    assert np.array_equal(decode_sync(io.BytesIO(flac)).channels[0], pcm)
    assert encode_data_uri(pcm, SAMPLE_RATE).startswith("data:audio/flac;base64,")
