"""core.record: the dataclass behaviour the timeline relies on."""
import pytest

from gdb_cudashim.core.record import as_dict, factory, record
from gdb_cudashim.core.timeline import Lookup, Timeline


@record
class Point:
    x: int
    y: int = 0
    tags: list = factory(list)


def test_fields_defaults_and_fresh_factories():
    a, b = Point(1), Point(1, 2, tags=["t"])
    assert (a.x, a.y, a.tags, b.y, b.tags) == (1, 0, [], 2, ["t"])
    a.tags.append("mine")
    assert Point(5).tags == []  # never shared between records
    assert as_dict(b) == {"x": 1, "y": 2, "tags": ["t"]}
    assert Point(1) == Point(1) and Point(1) != Point(2) and repr(a) == "Point(x=1, y=0, tags=['mine'])"


@pytest.mark.parametrize("args, kwargs", [((), {}), ((1, 2, [], 4), {}), ((1,), {"x": 2}), ((1,), {"z": 3})])
def test_bad_construction_is_a_type_error(args, kwargs):
    with pytest.raises(TypeError):
        Point(*args, **kwargs)


def test_a_required_field_after_a_default_is_refused():
    with pytest.raises(TypeError):
        @record
        class Bad:
            a: int = 0
            b: int


def test_timeline_records_behave_as_before():
    tl = Timeline()
    lookup = tl.add(Lookup(seq=tl.next_seq(), pid=1, tid=1, how="dlsym", symbol="cuInit", handle_library=None,
                           version=None, found=None))
    assert tl.lookups == [lookup] and lookup.kind == "lookup" and lookup.found_by is None
    assert Timeline().events is not tl.events and vars(lookup)["symbol"] == "cuInit"
