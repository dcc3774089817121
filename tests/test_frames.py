"""The WebSocket framing the hub does itself: the client-frame mask check. Pure: no I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from loadlib.raw import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, client_frame

from hub.core.frames import MaskedFrames

# Lengths around each size class of the header: 7-bit, 16-bit and 64-bit.
lengths = st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000])
frames = st.tuples(st.sampled_from([OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE]), lengths, st.booleans())


@given(st.lists(frames, min_size=1, max_size=6), st.lists(st.integers(1, 70_000), max_size=20))
def test_every_frame_masked_whatever_the_reads(
    specs: list[tuple[int, int, bool]], cuts: list[int]
) -> None:
    """Frames split into reads at any points: the check follows their boundaries and says no
    exactly when some frame is unmasked, from that frame on."""
    stream = b"".join(client_frame(op, b"m" * size, masked=masked) for op, size, masked in specs)
    check = MaskedFrames()
    position, answers = 0, []
    for cut in [*cuts, len(stream)]:
        chunk = stream[position : position + cut]
        position += len(chunk)
        if chunk:
            answers.append(check.feed(chunk))
    assert answers[-1] is all(masked for _, _, masked in specs)
    assert answers == sorted(answers, reverse=True)  # once refused, always refused


def test_one_byte_at_a_time() -> None:
    stream = client_frame(OP_TEXT, b"x" * 300) + client_frame(OP_TEXT, b"y", masked=False)
    check = MaskedFrames()
    answers = [check.feed(stream[i : i + 1]) for i in range(len(stream))]
    first_refusal = answers.index(False)
    assert first_refusal == 300 + 8 + 1  # the second byte of the unmasked frame's header
