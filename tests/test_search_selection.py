"""OpenR's selection rules on hand-made candidate sets with known answers."""

from __future__ import annotations

import pytest

from agents.search.selection import SELECTION_RULES, normalize_answer, select

ANSWERS = ["12", "7", "12.0", None, "7", "7"]
# per-candidate step scores: the "7"s have one weak step each; the "12"s are solid
SCORES = [[0.9, 0.8], [0.9, 0.1], [0.7, 0.9], [0.99, 0.99], [0.2, 0.6], [0.3, 0.5]]


def test_normalize_answer_groups_equal_numbers():
    assert normalize_answer(" 12.0 ") == normalize_answer("$12$") == normalize_answer("12") == "12"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("\\boxed{3/4}") == "3/4"
    assert normalize_answer("x = 3.") == "x=3"
    assert normalize_answer(None) is None and normalize_answer("  ") is None


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("majority_vote", 1),  # three 7s beat two 12s; the first 7 is returned
        ("prm_min_max", 3),  # candidate 3 has the best weakest step (0.99), answer or not
        ("prm_last_max", 3),
        ("prm_min_vote", 0),  # 12: 0.8 + 0.7 = 1.5 beats 7: 0.1 + 0.2 + 0.3 = 0.6; best 12 by min is #0
        ("prm_last_vote", 2),  # 12: 0.8 + 0.9 = 1.7 beats 7: 0.1 + 0.6 + 0.5 = 1.2; best 12 by last is #2
        ("orm_max", 3),
        ("orm_vote", 2),
    ],
)
def test_rules_on_a_known_set(rule, expected):
    assert select(rule, ANSWERS, SCORES) == expected


def test_answerless_candidates_never_win_a_vote_unless_all_are_answerless():
    assert select("majority_vote", [None, None, "3"]) == 2
    assert select("prm_last_vote", [None, None], [[0.1], [0.7]]) == 1
    assert select("majority_vote", [None, None]) == 0


def test_ties_go_to_the_earliest_candidate():
    assert select("majority_vote", ["5", "6", "6", "5"]) == 0
    assert select("prm_last_max", ["a", "b"], [[0.5], [0.5]]) == 0


def test_empty_score_lists_count_as_minus_one():
    assert select("prm_min_max", ["1", "2"], [[], [0.0]]) == 1


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="unknown selection rule"):
        select("best", ["1"])
    with pytest.raises(ValueError, match="needs scores"):
        select("prm_min_max", ["1"])
    with pytest.raises(ValueError, match="2 score lists for 1"):
        select("prm_min_max", ["1"], [[0.1], [0.2]])
    with pytest.raises(ValueError, match="empty"):
        select("majority_vote", [])


def test_every_rule_is_registered():
    assert set(SELECTION_RULES) >= {
        "majority_vote",
        "prm_min_max",
        "prm_min_vote",
        "prm_last_max",
        "prm_last_vote",
        "orm_max",
    }
