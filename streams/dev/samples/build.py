"""Rebuild the bundled sample calls from the recordings in tests/data/speech (run from the repo).

The samples are committed; this script documents exactly how they were made:
``python -m streams.dev.samples.build tests/data/speech``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np

from streams.decode import SAMPLE_RATE, decode_sync

HERE = Path(__file__).resolve().parent


def _write(
    path: Path, channels: list[np.ndarray], *, codec: str, rate: int, container: str | None = None
) -> None:
    layout = "mono" if len(channels) == 1 else "stereo"
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(stream, av.audio.stream.AudioStream)  # an audio codec was named
        formats = [f.name for f in stream.codec_context.codec.audio_formats or ()]
        stream.format = "s16" if "s16" in formats else formats[0]
        planar = np.stack(channels).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            planar.T.reshape(1, -1).copy(), format="s16", layout=layout
        )
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


def main(shared: Path) -> None:
    """Write the sample files next to this script."""
    birch = decode_sync(shared / "en_speechbrain_harvard_birch_canoe.wav").channels[0]
    austen = decode_sync(shared / "en_pocketsphinx_librivox_sense_sensibility_0870.wav").channels[0]
    jfk = decode_sync(shared / "en_whisper_jfk_stereo44k24bit.flac").channels[0]
    zh = decode_sync(shared / "zh_funasr_asr_example_welcome.wav").channels[0]
    de = decode_sync(shared / "de_picovoice_leopard_test_de.wav").channels[0]

    # A two-party call, agent on the left, customer on the right, taking turns, as a
    # telephone system records it: 8 kHz mu-law stereo WAV.
    agent = np.concatenate([_silence(0.5), birch, _silence(len(austen) / SAMPLE_RATE + 1.0), birch])
    customer = np.concatenate([_silence(1.0 + len(birch) / SAMPLE_RATE), austen])
    length = max(len(agent), len(customer)) + SAMPLE_RATE // 2
    agent = np.pad(agent, (0, length - len(agent)))
    customer = np.pad(customer, (0, length - len(customer)))
    _write(HERE / "support_call_stereo.wav", [agent, customer], codec="pcm_mulaw", rate=8000)
    _write(HERE / "inaugural_address.mp3", [jfk], codec="libmp3lame", rate=SAMPLE_RATE)
    _write(HERE / "welcome_zh.m4a", [zh], codec="aac", rate=SAMPLE_RATE, container="ipod")
    _write(HERE / "leichenhalle_de.ogg", [de], codec="libopus", rate=48000, container="ogg")
    _write(HERE / "birch_canoe.wav", [birch], codec="pcm_s16le", rate=SAMPLE_RATE)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/speech"))
