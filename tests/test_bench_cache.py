"""The result-cache benchmark's end-to-end miss/off estimate cancels the order effect of back-to-back runs."""

from __future__ import annotations

import pytest

from bench.cache import balanced_ratio


def rows(true_ratio: float, second_slower: float, count: int) -> list[dict]:
    """Songs alternating off-first and miss-first; the second run of each pair takes `second_slower` times as long."""
    out = []
    for index in range(count):
        order = ["off", "miss"] if index % 2 == 0 else ["miss", "off"]
        off = 30.0 + index  # songs differ in length, the ratio does not
        miss = off * true_ratio
        if order[1] == "miss":
            miss *= second_slower
        else:
            off *= second_slower
        out.append({"order": order, "miss_s": miss, "off_s": off})
    return out


@pytest.mark.parametrize(("true_ratio", "second_slower", "count"), [(1.0, 1.08, 4), (1.004, 1.05, 9), (1.03, 0.97, 6)])
def test_the_order_effect_cancels(true_ratio: float, second_slower: float, count: int) -> None:
    ratio, effect = balanced_ratio(rows(true_ratio, second_slower, count), "miss_s", "off_s")
    assert ratio == pytest.approx(true_ratio, rel=1e-9)
    assert effect == pytest.approx(second_slower, rel=1e-9)


def test_one_order_only_falls_back_to_the_plain_median() -> None:
    one_order = rows(1.02, 1.1, 1)
    assert balanced_ratio(one_order, "miss_s", "off_s") == (pytest.approx(1.02 * 1.1), 1.0)
