"""GenEval's rules on hand-made detections: every tag, every reason."""

import numpy as np
import pytest

from evaluators.geneval.rules import box_iou, clauses_met, judge, relative_position, select_objects


def box(x1, y1, x2, y2, score=0.95):
    return [x1, y1, x2, y2, score]


def test_select_objects_threshold_order_limit_and_absent():
    raw = {"cat": np.array([box(0, 0, 10, 10, 0.5), box(20, 0, 30, 10, 0.9), box(40, 0, 50, 10, 0.3)]),
           "dog": np.array([box(0, 0, 5, 5, 0.2)]), "cow": np.zeros((0, 5))}
    objects = select_objects(raw, "two_object")
    assert list(objects) == ["cat"]  # dog below threshold, cow empty: absent
    assert [b[4] for b in objects["cat"]] == [0.9, 0.5]  # > 0.3 strictly, most confident first
    assert list(select_objects(raw, "counting")) == []  # counting uses 0.9, strictly greater
    assert [b[4] for b in select_objects(raw, "counting", counting_threshold=0.85)["cat"]] == [0.9]
    many = {"cat": np.array([box(i, 0, i + 1, 1, 0.4 + i / 100) for i in range(20)])}
    assert len(select_objects(many, "single_object")["cat"]) == 16
    assert len(select_objects(many, "single_object", max_objects=3)["cat"]) == 3


def test_select_objects_nms_uses_plus_one_iou():
    # Two 10x10 boxes overlapping by 5 columns: GenEval's IoU counts pixels inclusively (11x11).
    a, b = box(0, 0, 10, 10, 0.9), box(5, 0, 15, 10, 0.8)
    assert box_iou(a, b) == pytest.approx((6 * 11) / (2 * 121 - 6 * 11))
    raw = {"cat": np.array([b, a])}
    assert len(select_objects(raw, "counting", counting_threshold=0.5)["cat"]) == 2  # nms 1.0: off
    assert len(select_objects(raw, "counting", counting_threshold=0.5, nms_threshold=0.3)["cat"]) == 1
    assert len(select_objects(raw, "counting", counting_threshold=0.5, nms_threshold=0.4)["cat"]) == 2


def test_relative_position_rule():
    left, right = box(0, 0, 10, 10), box(30, 0, 40, 10)
    assert relative_position(left, right) == {"left of"}
    assert relative_position(right, left) == {"right of"}
    assert relative_position(box(0, 0, 10, 10), box(0, 30, 10, 40)) == {"above"}  # y points down
    assert relative_position(box(0, 30, 10, 40), box(0, 0, 10, 10)) == {"below"}
    assert relative_position(box(0, 0, 10, 10), box(30, 30, 40, 40)) == {"left of", "above"}
    # Centres 1 px apart, boxes 10 px: within 0.1·(10+10) → no relation.
    assert relative_position(box(0, 0, 10, 10), box(1, 0, 11, 10)) == set()
    assert relative_position(box(0, 0, 10, 10), box(1, 0, 11, 10), position_threshold=0.0) == {"left of"}
    assert relative_position(box(0, 0, 10, 10), box(0, 0, 10, 10)) == set()


def spec(tag, include, exclude=None):
    s = {"tag": tag, "include": include, "prompt": "p"}
    if exclude:
        s["exclude"] = exclude
    return s


def colors_by_class(table):
    return lambda name, boxes: table[name][:len(boxes)]


def test_single_and_two_object():
    s = spec("two_object", [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}])
    assert judge(s, {"cat": [box(0, 0, 5, 5)], "dog": [box(9, 9, 12, 12)]}) == (True, "")
    assert judge(s, {"cat": [box(0, 0, 5, 5)]}) == (False, "expected dog>=1, found 0")
    assert judge(s, {}) == (False, "expected cat>=1, found 0\nexpected dog>=1, found 0")


def test_counting_and_exclude():
    s = spec("counting", [{"class": "clock", "count": 3}], [{"class": "clock", "count": 4}])
    three = [box(i * 10, 0, i * 10 + 5, 5) for i in range(3)]
    assert judge(s, {"clock": three}) == (True, "")
    assert judge(s, {"clock": three[:2]}) == (False, "expected clock>=3, found 2")
    four = three + [box(50, 0, 55, 5)]
    assert judge(s, {"clock": four}) == (False, "expected clock<4, found 4")


def test_colors():
    s = spec("colors", [{"class": "car", "count": 1, "color": "red"}])
    objects = {"car": [box(0, 0, 5, 5), box(10, 0, 15, 5)]}
    assert judge(s, objects, colors_by_class({"car": ["red", "blue"]})) == (True, "")
    # Only the top-`count` boxes are coloured: the second red car does not help.
    assert judge(s, objects, colors_by_class({"car": ["blue", "red"]})) == (
        False, "expected red car>=1, found 0 red; and 1 blue")
    s2 = spec("counting", [{"class": "car", "count": 2, "color": "red"}])
    assert judge(s2, objects, colors_by_class({"car": ["white", "red"]})) == (
        False, "expected red car>=2, found 1 red; and 1 red, 1 white")  # colours listed in GenEval's order


def test_color_attr():
    s = spec("color_attr", [{"class": "cup", "count": 1, "color": "purple"},
                            {"class": "apple", "count": 1, "color": "black"}])
    objects = {"cup": [box(0, 0, 5, 5)], "apple": [box(10, 0, 15, 5)]}
    assert judge(s, objects, colors_by_class({"cup": ["purple"], "apple": ["black"]})) == (True, "")
    assert judge(s, objects, colors_by_class({"cup": ["black"], "apple": ["purple"]})) == (
        False, "expected purple cup>=1, found 0 purple; and 1 black\n"
               "expected black apple>=1, found 0 black; and 1 purple")


def test_position():
    s = spec("position", [{"class": "teddy bear", "count": 1},
                          {"class": "dog", "count": 1, "position": ["right of", 0]}])
    bear, dog_right, dog_left = box(0, 0, 10, 10), box(30, 0, 40, 10), box(-40, 0, -30, 10)
    assert judge(s, {"teddy bear": [bear], "dog": [dog_right]}) == (True, "")
    assert judge(s, {"teddy bear": [bear], "dog": [dog_left]}) == (
        False, "expected dog right of target, found left of target")
    assert judge(s, {"teddy bear": [bear], "dog": [box(1, 0, 11, 10)]}) == (
        False, "expected dog right of target, found  target")
    assert judge(s, {"dog": [dog_right]}) == (
        False, "expected teddy bear>=1, found 0\nno target for dog to be right of")
    assert judge(s, {"teddy bear": [bear]}) == (False, "expected dog>=1, found 0")
    diagonal = box(-40, 30, -30, 40)
    assert judge(s, {"teddy bear": [bear], "dog": [diagonal]}) == (
        False, "expected dog right of target, found left of and below target")


def test_partial_credit():
    s = spec("color_attr", [{"class": "cup", "count": 1, "color": "purple"},
                            {"class": "apple", "count": 1, "color": "black"}])
    objects = {"cup": [box(0, 0, 5, 5)], "apple": [box(10, 0, 15, 5)]}
    assert clauses_met(s, objects, colors_by_class({"cup": ["purple"], "apple": ["red"]})) == 0.5
    assert clauses_met(s, objects, colors_by_class({"cup": ["purple"], "apple": ["black"]})) == 1.0
    c = spec("counting", [{"class": "clock", "count": 2}], [{"class": "clock", "count": 3}])
    assert clauses_met(c, {"clock": [box(0, 0, 1, 1)] * 3}) == 0.0
