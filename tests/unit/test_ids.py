import os
import uuid

from creep.domain import ids


def _assert_rfc4122(text: str, version: int) -> None:
    parsed = uuid.UUID(text)
    assert parsed.version == version
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == text


def test_uuid4_str_gives_distinct_rfc4122_version4_ids() -> None:
    made = [ids.uuid4_str() for _ in range(3 * 256 + 5)]  # crosses pool refills
    assert len(set(made)) == len(made)
    for text in made:
        _assert_rfc4122(text, 4)


def test_a_forked_child_does_not_reuse_the_parents_pool() -> None:
    ids.uuid4_str()  # fill the pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id
        os.write(write, ids.uuid4_str().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child != ids.uuid4_str()


def test_uuid7_many_matches_uuid7_and_keeps_its_random_bits_in_big_batches() -> None:
    # A claim of 500 leased tasks makes 1,500 ids at once: more random bytes than the pool
    # holds. Every id must still carry its own random tail, not zeros.
    before = ids.uuid7()
    batch = ids.uuid7_many(1500)
    after = ids.uuid7_many(1)
    made = [before, *batch, *after]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    for text in made:
        _assert_rfc4122(text, 7)
    tails = [int(text.replace("-", "")[17:], 16) for text in batch]
    assert len(set(tails)) == len(tails)
    assert sum(1 for t in tails if t == 0) == 0
    assert ids.uuid7_many(0) == []


def test_uuid7_many_carries_a_full_sequence_into_the_next_millisecond() -> None:
    ids.uuid7()
    ids._last_ms += 5  # as if the clock were behind: ids count on from the last one
    ids._seq = 0xFFE
    start = ids._last_ms
    made = [*ids.uuid7_many(3), ids.uuid7()]
    assert made == sorted(made)
    stamps = [(int(t.replace("-", "")[:12], 16), int(t.replace("-", "")[13:16], 16))
              for t in made]
    assert stamps == [(start, 0xFFF), (start + 1, 0), (start + 1, 1), (start + 1, 2)]


def test_canonical_uuid_writes_a_uuid_as_creep_does_and_leaves_other_text() -> None:
    made = ids.uuid7()
    for written in (made, made.upper(), f"{{{made.upper()}}}", made.replace("-", ""),
                    f"urn:uuid:{made}"):
        assert ids.canonical_uuid(written) == made
    for other in ("", "nope", made[:-1], made + "0", "t-" + made):
        assert ids.canonical_uuid(other) == other
    assert ids.canonical_uuid(None) is None
