"""OREO's value as a search guide: a finished candidate is valued by the soft Bellman identity at its last step,
V(s_last) + beta * log pi / pi_ref (a position the value loss trains), never by V read after the last step."""

from __future__ import annotations

import pytest
import torch

from agents.rl.oreo_value import ValueScorer, soft_bellman_terminal_value
from agents.search.expansion import Ledger
from agents.search.tree import Node

# The trajectory of tests/test_oreo_losses.py: 4 action tokens in two steps (tokens 0-1 and 2-3), R = 1, beta = 0.5,
# log pi / pi_ref per token [0.1, 0.2, -0.3, 0.4]. At an exact fit of Eq. 8, V(s_t) = R - beta * sum_{i>=t}:
# V(s_0) = 1 - 0.5 * 0.4 = 0.8, V(s_1) = 1 - 0.5 * 0.1 = 0.95 (and V(s_1) = V(s_0) + 0.5 * (0.1 + 0.2), Eq. 3).
LOGPROBS = [[-1.0, -0.5, -1.3, -0.2], [-2.0, -1.0, -0.5, -0.5]]
REFERENCE = [[-1.1, -0.7, -1.0, -0.6], [-2.0, -1.0, -0.25, -0.25]]
LAST_ACTION = [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]


def test_terminal_value_known_answer():
    values = soft_bellman_terminal_value(
        torch.tensor([0.95, 0.3]),
        torch.tensor(LOGPROBS),
        torch.tensor(REFERENCE),
        torch.tensor(LAST_ACTION),
        beta=0.5,
    )
    # row 0: 0.95 + 0.5 * (-0.3 + 0.4) = 1.0 = R (the exact fit returns the outcome)
    # row 1: 0.3 + 0.5 * (-0.25 - 0.25) = 0.05; tokens outside the last action never count
    assert values.tolist() == pytest.approx([1.0, 0.05])


def test_terminal_value_is_the_outcome_at_an_exact_fit_for_any_beta():
    log_ratio = torch.tensor(LOGPROBS[0]) - torch.tensor(REFERENCE[0])
    for beta in (0.03, 0.5, 2.0):
        v_last = 1.0 - beta * float(log_ratio[2:].sum())  # Eq. 8's fixed point at the last state
        value = soft_bellman_terminal_value(
            torch.tensor([v_last]),
            torch.tensor(LOGPROBS[:1]),
            torch.tensor(REFERENCE[:1]),
            torch.tensor(LAST_ACTION[:1]),
            beta,
        )
        assert float(value) == pytest.approx(1.0)


# --- the scorer on a tiny model -----------------------------------------------------------------------------------


@pytest.fixture
def trained_agent():
    """A toy OREO whose policy moved away from its reference and whose value head is non-zero."""
    from tests.test_oreo import toy_agent, toy_data

    torch.manual_seed(0)
    agent = toy_agent()
    agent.add_data(toy_data())
    agent.train_on(list(range(16)))
    with torch.no_grad():
        agent.value_head.weight.normal_(0.0, 0.05)
        agent.value_head.bias.fill_(0.3)
    return agent


def scorer_of(agent, **kwargs) -> ValueScorer:
    scorer = agent.value_scorer(**kwargs)
    scorer.instruction = "Write digits."  # the toy data's instruction (the env's adapter has none)
    return scorer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_score_reads_the_trained_states_and_the_bellman_terminal(trained_agent):
    """``score`` on a finished candidate = the training's own quantities: V at the states the value loss fits,
    and for the last step V(s_last) + beta * (the training's log-ratio summed over the last action)."""
    from agents.rl.forward import response_scores
    from agents.rl.oreo import TrajectoryBatch

    agent = trained_agent
    index = 0  # Problem 0, steps ["1234", "5678"], R = 1
    trajectory = agent.pool[index]
    batch = TrajectoryBatch([agent._tokenized(index)], agent.pad_token_id)
    # the training's V at the states and log-ratio per token, from the training's own row
    with torch.no_grad():
        values = batch.to_trajectories(
            batch.widen(response_scores(agent.value_lm.backbone, batch.value_rows, agent.value_head))
        )[0]
        log_ratio = batch.to_trajectories(
            agent.no_grad_forward(batch.rows).logprobs - agent.reference_logprobs(batch.rows)
        )[0]
    states = batch.state_mask[0].nonzero().flatten().tolist()
    assert len(states) == 2
    last = states[-1]
    expected_last = float(values[last]) + agent.config.beta * float(log_ratio[last:].sum())
    assert abs(float(log_ratio[last:].sum())) > 1e-3  # the policy moved: the log-ratio term matters

    scores = scorer_of(agent).score([trajectory.question], [trajectory.steps])[0]
    assert scores == pytest.approx([float(values[last]), expected_last], abs=1e-5)
    cheap = scorer_of(agent, terminal="state").score([trajectory.question], [trajectory.steps])[0]
    assert cheap == pytest.approx([float(values[last]), float(values[last])], abs=1e-5)
    # unfinished: the last step is followed by the delimiter and V is read at the next state (a trained position)
    open_scores = scorer_of(agent).score([trajectory.question], [trajectory.steps], finished=[False])[0]
    assert open_scores[0] == pytest.approx(float(values[last]), abs=1e-5) and len(open_scores) == 2


def test_evaluate_values_a_finished_node_from_its_parents_state(trained_agent):
    """A finished node: V at the parent's prompt (the state its action was taken from) + beta * log-ratio of its
    action (its tokens and EOS); an unfinished node: V at its own prompt. The policy and reference passes count."""
    from agents.adapters import StepAdapter

    agent = trained_agent
    adapter = StepAdapter("Write digits.")
    root = Node(problem=0, state=None, info={"problem": "Problem 0", "steps": []})
    done = Node(
        problem=0,
        state=None,
        info={"problem": "Problem 0", "steps": ["1234"]},
        parent=root,
        action="1234",
        depth=1,
        terminated=True,
    )
    open_ = Node(
        problem=0,
        state=None,
        info={"problem": "Problem 0", "steps": ["abcd"]},
        parent=root,
        action="abcd",
        depth=1,
    )
    results = {}
    for mode in ("bellman", "state", "after"):
        scorer = scorer_of(agent, terminal=mode)
        scorer.adapter = adapter
        ledger = Ledger()
        for node in (done, open_):
            node.value = None
        scorer.evaluate([done, open_], [ledger])
        results[mode] = (done.value, open_.value, ledger.prm_tokens, scorer.ratio_tokens_read)

    scorer = scorer_of(agent)
    root_ids = scorer._encode(adapter.prompt(agent.engine, root.info))
    v_root = scorer._read([(root_ids, [len(root_ids) - 1])])[0][0]
    action = list(agent.tokenizer("1234", add_special_tokens=False)["input_ids"]) + [
        agent.tokenizer.eos_token_id
    ]
    logprobs, reference = agent.action_logprobs([(root_ids, action, 0)])
    ratio = float((logprobs[0, : len(action)] - reference[0, : len(action)]).sum())
    assert abs(ratio) > 1e-3
    assert results["bellman"][0] == pytest.approx(v_root + agent.config.beta * ratio, abs=1e-5)
    assert results["state"][0] == pytest.approx(v_root, abs=1e-5)
    after_ids = scorer._encode(adapter.prompt(agent.engine, done.info))
    v_after = scorer._read([(after_ids, [len(after_ids) - 1])])[0][0]
    assert results["after"][0] == pytest.approx(v_after, abs=1e-5)
    # the unfinished node is valued the same way in every mode: V at its own next prompt
    assert results["bellman"][1] == pytest.approx(results["after"][1]) == pytest.approx(results["state"][1])
    # compute: the bellman rule also pays the policy's and the reference's pass over the parent prompt + action
    assert results["bellman"][3] == 2 * (len(root_ids) + len(action)) and results["state"][3] == 0
    assert results["bellman"][2] == results["state"][2] + 2 * (len(root_ids) + len(action))
    assert done.step_scores == [done.value]


def test_bellman_needs_the_policy_and_the_reference():
    class Tokenizer:
        eos_token_id = 0

    class Engine:
        tokenizer = Tokenizer()

    with pytest.raises(ValueError, match="log_probs"):
        ValueScorer(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), Engine(), terminal="bellman")
    with pytest.raises(ValueError, match="terminal"):
        ValueScorer(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), Engine(), terminal="last")
    assert ValueScorer(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), Engine()).terminal == "state"


def test_value_ranking_counts_right_over_wrong_pairs_within_a_problem():
    from experiments.oreo_arithmetic import value_ranking

    results = [
        {  # right 0.9 vs wrong 0.5 and 0.9: 1 + 1/2; the unfinished candidate is ignored
            "candidate_scores": [[0.1, 0.9], [0.5], [0.9], [0.0]],
            "candidate_correct": [True, False, False, False],
            "candidate_terminated": [True, True, True, False],
        },
        {  # right 0.2 vs wrong 0.3: 0
            "candidate_scores": [[0.2], [0.3]],
            "candidate_correct": [True, False],
            "candidate_terminated": [True, True],
        },
        {"candidate_scores": [[0.4]], "candidate_correct": [True], "candidate_terminated": [True]},  # no pair
    ]
    assert value_ranking(results) == {"value_auc": pytest.approx(1.5 / 3), "value_pairs": 3}
