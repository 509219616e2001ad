import os
import uuid

from creep.domain import ids


def test_uuid4_str_gives_distinct_rfc4122_version4_ids() -> None:
    made = [ids.uuid4_str() for _ in range(3 * 256 + 5)]  # crosses pool refills
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


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
