"""assembly.ready_reason: when a receiving study counts as complete."""

from node.assembly import next_check_s, ready_reason
from node.config import StudyConfig
from node.model import StudyProgress

CONFIG = StudyConfig(complete_after_s=10, max_wait_s=600, analyse_when_four_views=True)
FOUR = frozenset({"RCC", "LCC", "RMLO", "LMLO"})


def progress(first=0.0, last=0.0, views=frozenset(), open_=False):
    return StudyProgress("1.2.3", first, last, frozenset(views), open_)


def test_not_ready_while_instances_keep_coming():
    assert ready_reason(progress(0, 95), now=100, config=CONFIG) is None


def test_ready_after_quiet_period():
    assert "no instance for 10 s" == ready_reason(progress(0, 90), now=100, config=CONFIG)
    assert ready_reason(progress(0, 90.5), now=100, config=CONFIG) is None


def test_four_views_ready_at_once_when_association_released():
    assert ready_reason(progress(0, 99.9, FOUR), now=100, config=CONFIG) == "four standard views received"


def test_four_views_wait_while_their_association_is_open():
    assert ready_reason(progress(0, 99.9, FOUR, open_=True), now=100, config=CONFIG) is None


def test_three_views_wait_for_the_quiet_period():
    assert ready_reason(progress(0, 99.9, FOUR - {"LMLO"}), now=100, config=CONFIG) is None


def test_four_view_rule_can_be_switched_off():
    config = StudyConfig(complete_after_s=10, max_wait_s=600, analyse_when_four_views=False)
    assert ready_reason(progress(0, 99.9, FOUR), now=100, config=config) is None


def test_max_wait_wins_over_a_trickle():
    assert "maximum" in ready_reason(progress(0, 599.9, open_=True), now=600, config=CONFIG)


def test_next_check_is_the_earlier_of_quiet_and_max_wait():
    assert next_check_s(progress(0, 95), now=100, config=CONFIG) == 5
    assert next_check_s(progress(0, 599), now=599.5, config=CONFIG) == 0.5
    assert next_check_s(progress(0, 0), now=1000, config=CONFIG) == 0
