"""Pose keypoints -> heatmaps (the reference's rule) and the keypoint formats we read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fashion_rag.inpaint import keypoints as K
from fashion_rag.inpaint import pose as P


def reference_heatmap(kpoint, shape, sigma=9.0):
    """The reference's kpoint_to_heatmap, restated with numpy (pixel grid, sigma^2, max-normalised)."""
    h, w = shape
    if not np.any(np.asarray(kpoint) > 0):
        return np.zeros((h, w))
    yy, xx = np.mgrid[:h, :w]
    m = np.exp(-((xx - kpoint[0]) ** 2 + (yy - kpoint[1]) ** 2) / sigma**2)
    return m / (m.max() + np.finfo("float32").eps)


def test_heatmap_peak_and_sigma_squared_rule():
    pts = np.zeros((18, 2))
    pts[0] = (100, 200)
    maps = P.keypoint_heatmaps(pts, (384, 512))
    assert maps.shape == (18, 512, 384) and maps.dtype == torch.float32
    assert float(maps[0, 200, 100]) == pytest.approx(1.0, abs=1e-6)
    # exp(-d^2 / sigma^2) with sigma = 9 (not 2 sigma^2): at d = 9 the value is e^-1.
    assert float(maps[0, 200, 109]) == pytest.approx(math.exp(-1), rel=1e-5)
    assert float(maps[0, 209, 100]) == pytest.approx(math.exp(-1), rel=1e-5)
    assert float(maps[0, 203, 104]) == pytest.approx(math.exp(-25 / 81), rel=1e-5)
    assert not maps[1:].any()  # (0, 0) is a missing keypoint: zero channels


def test_missing_rule_and_reference_equality():
    pts = np.array([[-1, -1], [0, 0], [0, 30], [40, -5], [12.4, 7.6], [383, 511]] + [[0, 0]] * 12, float)
    maps = P.keypoint_heatmaps(pts, (48, 64)).numpy()
    assert not maps[0].any() and not maps[1].any()  # x <= 0 and y <= 0: missing
    assert maps[2].max() == pytest.approx(1.0) and maps[3].max() == pytest.approx(1.0)
    for i in range(6):
        np.testing.assert_allclose(maps[i], reference_heatmap(pts[i], (64, 48)), atol=1e-6)
    # Off-grid keypoints are normalised to a peak of exactly 1, as in the reference.
    assert maps[4].max() == pytest.approx(1.0, abs=1e-6)


def _openpose(points, conf=None, **extra):
    flat = []
    for i, (x, y) in enumerate(points):
        flat += [x, y, 1.0 if conf is None else conf[i]]
    return {"people": [{"pose_keypoints_2d": flat}], **extra}


RNG = np.random.default_rng(0)
POINTS = RNG.uniform(10, 300, size=(18, 2)).round(1)


def test_openpose_json_pixels_and_confidence():
    conf = [1.0] * 18
    conf[3] = 0.0  # OpenPose's "not detected"
    (kp,) = K.parse_keypoints(json.dumps(_openpose(POINTS, conf)))
    xy = kp.to_size((384, 512))
    np.testing.assert_allclose(xy[0], POINTS[0])  # no canvas: already in the target frame
    assert tuple(xy[3]) == (0.0, 0.0)
    maps = P.pose_heatmaps([kp], (384, 512))
    assert maps.shape == (1, 18, 512, 384) and not maps[0, 3].any()


def test_pose_keypoint_frames_normalised_and_canvas():
    frames = [_openpose(POINTS / 400.0, canvas_width=400, canvas_height=400),
              _openpose(POINTS, canvas_width=400, canvas_height=800)]
    kps = K.parse_keypoints(frames)
    assert len(kps) == 2 and kps[0].normalized and not kps[1].normalized
    np.testing.assert_allclose(kps[0].to_size((384, 512))[5], POINTS[5] / 400 * [384, 512])
    np.testing.assert_allclose(kps[1].to_size((384, 512))[5], POINTS[5] * [384 / 400, 512 / 800])
    empty = K.parse_keypoints([{"people": [], "canvas_width": 10, "canvas_height": 10}])
    assert not P.pose_heatmaps(empty, (16, 16)).any()


def test_dresscode_keypoints_rescale_like_the_reference():
    rows = [[x, y, 0.9, i] for i, (x, y) in enumerate(POINTS)]
    rows[7] = [-1.0, -1.0, 0.0, 7]
    (kp,) = K.parse_keypoints({"keypoints": rows})
    assert kp.canvas == (384, 512)
    xy = kp.to_size((768, 1024))
    np.testing.assert_allclose(xy[2], POINTS[2] * 2)
    maps = P.pose_heatmaps([kp], (768, 1024))[0].numpy()
    assert not maps[7].any()
    np.testing.assert_allclose(maps[2], reference_heatmap(POINTS[2] * 2, (1024, 768)), atol=1e-6)


def test_plain_lists_body25_and_coco17():
    (a,) = K.parse_keypoints(POINTS.tolist())
    (b,) = K.parse_keypoints(np.c_[POINTS, np.ones(18)].ravel().tolist())  # flat x, y, c
    np.testing.assert_allclose(a.xy, POINTS)
    np.testing.assert_allclose(b.xy, POINTS)

    body25 = RNG.uniform(10, 300, size=(25, 2))
    (c,) = K.parse_keypoints(_openpose(body25))
    np.testing.assert_allclose(c.xy[8], body25[9])  # right hip skips BODY_25's mid-hip
    np.testing.assert_allclose(c.xy[17], body25[18])

    coco17 = RNG.uniform(10, 300, size=(17, 2))
    (d,) = K.parse_keypoints(coco17.tolist())
    np.testing.assert_allclose(d.xy[1], (coco17[5] + coco17[6]) / 2)  # neck = shoulders' middle
    np.testing.assert_allclose(d.xy[2], coco17[6])  # right shoulder
    np.testing.assert_allclose(d.xy[15], coco17[1])  # left eye


def test_second_person_and_errors():
    two = _openpose(POINTS)
    two["people"].append({"pose_keypoints_2d": np.c_[POINTS + 1, np.ones(18)].ravel().tolist()})
    np.testing.assert_allclose(K.parse_keypoints(two, person=1)[0].xy, POINTS + 1)
    with pytest.raises(K.PoseFormatError, match="person 2"):
        K.parse_keypoints(two, person=2)
    with pytest.raises(K.PoseFormatError, match="not valid JSON"):
        K.parse_keypoints("{nope")
    with pytest.raises(K.PoseFormatError, match="12 keypoints"):
        K.parse_keypoints(POINTS[:12].tolist())
    with pytest.raises(K.PoseFormatError, match="unrecognised"):
        K.parse_keypoints({"something": 1})


def test_resize_pose_is_the_reference_bilinear():
    maps = torch.rand(1, 18, 64, 48)
    out = P.resize_pose(maps, 8, 6)
    assert torch.equal(out, torch.nn.functional.interpolate(maps, size=(8, 6), mode="bilinear"))
    assert P.resize_pose(maps, 64, 48) is maps


def test_render_skeleton():
    img = P.render_skeleton(POINTS, (384, 512))
    assert img.shape == (512, 384, 3) and img.dtype == np.float32
    assert 0 <= img.min() and img.max() <= 1
    x, y = POINTS[0].astype(int)
    assert img[y, x].max() > 0.5  # a dot on the nose
    assert img[0:3, 0:3].max() == 0  # black background
    assert not P.render_skeleton(np.zeros((18, 2)), (32, 32)).any()


def test_pose_node_in_comfyui(comfy_runtime):
    text = json.dumps({"keypoints": [[x, y, 1, i] for i, (x, y) in enumerate(POINTS)]})
    prompt = {
        "1": {"class_type": "FashionRAGPoseFromKeypoints",
              "inputs": {"keypoints_json": text, "width": 192, "height": 256}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}},
    }
    out = comfy_runtime.run(prompt)
    assert out["2"]["images"] and out["1"]["images"]  # node preview and PreviewImage

    import importlib

    node = importlib.import_module(f"{comfy_runtime.pack.__name__}.nodes.pose").FashionRAGPoseFromKeypoints
    frames = [_openpose(POINTS / 400.0), _openpose(POINTS / 400.0)]
    res = node.execute("", 96, 128, pose_keypoint=frames)
    assert res[0].shape == (2, 18, 128, 96) and res[1].shape == (2, 128, 96, 3)
    assert float(res[0].amax()) == pytest.approx(1.0)
    # Pixel coordinates in another frame: source size rescales them.
    res = node.execute(text, 192, 256, source_width=384, source_height=512)
    assert res[0].shape == (1, 18, 256, 192)
    with pytest.raises(ValueError, match="No keypoints"):
        node.execute("  ", 96, 128)


def test_pose_node_passes_its_keypoints_on_as_pose_keypoint(comfy_runtime):
    """The node's third output is POSE_KEYPOINT in the target frame: read back, it gives the very
    keypoints the heatmaps were drawn from, so masks fed from it share the pose's source."""
    import importlib

    node = importlib.import_module(f"{comfy_runtime.pack.__name__}.nodes.pose").FashionRAGPoseFromKeypoints
    text = json.dumps({"keypoints": [[x, y, 1, i] for i, (x, y) in enumerate(POINTS)]})
    pose, _, frames = node.execute(text, 192, 256, source_width=384, source_height=512)
    assert frames[0]["canvas_width"] == 192 and frames[0]["canvas_height"] == 256
    (again,) = K.parse_keypoints(frames)
    (original,) = K.parse_keypoints(text)
    original = K.Keypoints(original.xy, (384, 512))
    assert np.allclose(again.to_size((192, 256)), original.to_size((192, 256)))
    assert np.array_equal(again.present, original.present)
    assert torch.equal(P.pose_heatmaps([again], (192, 256)), pose)
    # A frame without anyone stays a frame without anyone (zero heatmaps downstream).
    assert K.openpose_frames([K.Keypoints.none()], (8, 8))[0]["people"] == []


# --- malformed keypoints: one line naming the field ------------------------------------------------

CANVAS_MESSAGE = "pose 0: canvas_width must be a whole number of pixels from 1 to 16384, got "


@pytest.mark.parametrize("canvas", [
    "1e-300", '"abc"', "-5", "0", "NaN", "Infinity", "1e30", "true", "[]", "{}",
])
def test_malformed_canvas_is_one_line_naming_the_field(canvas):
    text = ('{"people": [{"pose_keypoints_2d": ' + json.dumps([10.0, 10.0, 1.0] * 18) + '}], '
            f'"canvas_width": {canvas}, "canvas_height": 512}}')
    with pytest.raises(K.PoseFormatError) as err:
        K.parse_keypoints(text)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(CANVAS_MESSAGE), message
    # The bad value is shown as the JSON spelled it (1e30 as Python writes it).
    assert message.endswith({"1e30": "1e+30", "[]": "[]", "{}": "{}"}.get(canvas, canvas)), message


PERSON = json.dumps([10.0, 10.0, 1.0] * 18)


@pytest.mark.parametrize("text,expected", [
    ('{"people": 5}', "pose 0: people must be a list of {'pose_keypoints_2d'"),
    ('{"people": {"a": 1}}', "pose 0: people must be a list of {'pose_keypoints_2d'"),
    ('{"people": [{"pose_keypoints_2d": "abc"}]}', 'pose 0: pose_keypoints_2d must be a non-empty list'),
    ('{"people": [{"pose_keypoints_2d": [true, 1, 1]}]}',
     "pose 0: pose_keypoints_2d[0] must be a number, got true"),
    ('{"people": [{"pose_keypoints_2d": [[1, 2], [3, [4]]]}]}',
     "pose 0: pose_keypoints_2d[1][1] must be a number, got a list of 1"),
    ('[["1", "2"]]', 'pose 0: keypoints[0][0] must be a number, got "1"'),
    ('{"keypoints": [[1, 2], [3]]}', "pose 0: keypoints[1] must be an [x, y, ...] row of 2 numbers"),
    ('{"keypoints": [[1e300, 5]]}',
     "pose 0: keypoint 0 of keypoints is at (1e+300, 5); coordinates must lie"),
    ("[[1" + "0" * 400 + ", 5]]", "pose 0: keypoints holds a number beyond float range"),
    ("[" * 100_000, "keypoint JSON nested too deeply"),
    ('{"people": [{"pose_keypoints_2d": ' + PERSON + '}], "canvas_width": 512}',
     "pose 0: canvas_height must be a whole number of pixels from 1 to 16384, got nothing"),
    ('{"people": [' + ", ".join(['{"pose_keypoints_2d": ' + PERSON + "}"] * 257) + "]}",
     "pose 0: people lists 257 people; at most 256 are read"),
    ("[" + ", ".join(['{"people": []}'] * 1025) + "]",
     "1025 frames of keypoints; at most 1024 are read at once"),
], ids=["people-int", "people-object", "keypoints-string", "bool", "nested", "string-number", "ragged",
        "far", "huge-int", "deep", "canvas-half", "257-people", "1025-frames"])
def test_malformed_keypoint_json_is_one_line_naming_the_field(text, expected):
    with pytest.raises(K.PoseFormatError) as err:
        K.parse_keypoints(text)
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value)


def test_the_bounds_themselves_are_accepted():
    assert len(K.parse_keypoints([{"people": []}] * 1024)) == 1024
    frame = {"people": [{"pose_keypoints_2d": [10.0, 10.0, 1.0] * 18}] * 256,
             "canvas_width": 16384, "canvas_height": 1.0e3}  # a whole number written as a float is one
    (kp,) = K.parse_keypoints(frame, person=255)
    assert kp.canvas == (16384, 1000)
    # NaN, inf and null coordinates stay what the module docstring says: missing keypoints.
    (kp,) = K.parse_keypoints('[[NaN, 5]' + ", [10, 10]" * 15 + ", [null, 4], [Infinity, 3]]")
    assert not kp.present[0] and not kp.present[16] and not kp.present[17] and kp.present[1:16].all()


# --- memory: a budget, refused before anything is allocated ----------------------------------------


def test_frames_beyond_the_budget_are_refused():
    # 2 GiB / (384 * 512 pixels * (18 heatmaps + 3 preview channels) * 4 bytes) = 130.03 frames.
    with pytest.raises(ValueError) as err:
        P.pose_heatmaps([K.Keypoints.none()] * 131, (384, 512))
    message = str(err.value)
    assert message.startswith("a pose of 131 frame(s) at 384x512 would take 2.01 GiB"), message
    assert "more than the 2 GiB a node may allocate; at most 130 frame(s) fit at 384x512" in message


def _status(key: str) -> int:
    """Bytes, from the kernel's accounting of this process (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _peak_increase(fn) -> int:
    """How far the resident memory rose above its level at the start while fn ran: the peak
    (VmHWM) is reset first by writing 5 to /proc/self/clear_refs. Arrays this large are mapped
    fresh by the allocator, so none of it hides in memory freed earlier."""
    Path("/proc/self/clear_refs").write_text("5")
    rss = _status("VmRSS")
    fn()
    return _status("VmHWM") - rss


def test_pose_memory_stays_near_its_outputs_and_8192_is_refused():
    """At 2048x1024 one frame's peak is at most 1.25x its outputs (the old float64 grid and its
    copies took 2.7x); 8192x8192 is refused before anything is allocated (it took 14 GiB)."""
    kp = [K.Keypoints(np.random.default_rng(0).uniform(0.1, 0.9, (18, 2)), normalized=True)]
    P.pose_heatmaps(kp, (8, 8)), P.skeleton_previews(kp, (8, 8))  # lazy imports, first-call set-up
    outputs = 2048 * 1024 * (18 + 3) * 4  # heatmaps and preview, float32: 176,160,768 bytes
    size = (2048, 1024)
    allowed = _peak_increase(lambda: (P.pose_heatmaps(kp, size), P.skeleton_previews(kp, size)))
    assert allowed <= 1.25 * outputs, allowed / outputs

    def refused():
        with pytest.raises(ValueError) as err:
            P.pose_heatmaps(kp, (8192, 8192))
        assert str(err.value).startswith("a pose of 1 frame(s) at 8192x8192 would take 5.25 GiB"), err.value

    assert _peak_increase(refused) < 16 << 20


def test_pose_node_limits_in_comfyui(comfy_runtime):
    """Through a real prompt: width 8192 fails ComfyUI's validation (max 4096), and a malformed
    canvas reaches the user as the one line, not a ZeroDivisionError."""
    from comfy_harness import PromptFailed

    def prompt(text, width):
        return {"1": {"class_type": "FashionRAGPoseFromKeypoints",
                      "inputs": {"keypoints_json": text, "width": width, "height": 512}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}}}

    good = json.dumps({"keypoints": [[x, y, 1, i] for i, (x, y) in enumerate(POINTS)]})
    with pytest.raises(PromptFailed) as err:
        comfy_runtime.run(prompt(good, 8192))
    assert err.value.kind == "validation" and "bigger than max of 4096" in str(err.value.payload)
    bad = '{"people": [{"pose_keypoints_2d": ' + PERSON + '}], "canvas_width": 1e-300, "canvas_height": 512}'
    with pytest.raises(PromptFailed) as err:
        comfy_runtime.run(prompt(bad, 384))
    assert err.value.kind == "execution"
    # ComfyUI ends the message with a newline (traceback.format_exception_only): one line.
    assert err.value.payload["exception_message"].rstrip("\n") == CANVAS_MESSAGE + "1e-300"

    import importlib

    node = importlib.import_module(f"{comfy_runtime.pack.__name__}.nodes.pose").FashionRAGPoseFromKeypoints
    with pytest.raises(ValueError, match=r"^a pose of 131 frame\(s\) at 384x512"):
        node.execute("", 384, 512, pose_keypoint=[{"people": []}] * 131)


# --- boundaries and index tables, pinned by literals (mutation pass) -------------------------------


def test_a_keypoint_on_an_axis_is_present_only_both_at_most_zero_is_missing():
    """(0, 30) and (40, -5) are measurements; only x <= 0 and y <= 0 together mark a missing point.
    Mutation caught: Keypoints' missing rule `x <= 0 and y <= 0` made `x <= 0 or y <= 0`."""
    rows = [[0.0, 30.0], [40.0, -5.0], [-3.0, 0.0]] + [[10.0, 10.0]] * 15
    (kp,) = K.parse_keypoints(rows)
    np.testing.assert_array_equal(kp.xy[:3], [[0.0, 30.0], [40.0, -5.0], [0.0, 0.0]])
    assert kp.present.tolist() == [True, True, False] + [True] * 15


def test_coco17_maps_every_keypoint_to_coco18():
    """COCO-17 (nose, l/r eye, l/r ear, l/r shoulder, elbow, wrist, hip, knee, ankle) into COCO-18,
    every index written out. Mutation caught: the ears swapped in the COCO-17 table."""
    coco17 = [[10.0 + i, 100.0 + i] for i in range(17)]
    (d,) = K.parse_keypoints(coco17)
    expected_x = [10, 15.5, 16, 18, 20, 15, 17, 19, 22, 24, 26, 21, 23, 25, 12, 11, 14, 13]
    assert d.xy[:, 0].tolist() == expected_x
    assert (d.xy[:, 1] - d.xy[:, 0]).tolist() == [90.0] * 18


def test_body25_maps_every_keypoint_to_coco18():
    """BODY_25 minus mid-hip (8) and the feet (19-24), every index written out.
    Mutation caught: the eyes swapped in the BODY_25 table."""
    body25 = [[10.0 + i, 100.0 + i] for i in range(25)]
    (c,) = K.parse_keypoints(_openpose(body25))
    assert c.xy[:, 0].tolist() == [10, 11, 12, 13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28]


@pytest.mark.parametrize("gone", [5, 6], ids=["left-shoulder", "right-shoulder"])
def test_coco17_neck_needs_both_shoulders(gone):
    """The neck is the shoulders' midpoint only when both are present; one missing leaves it missing.
    Mutation caught: the neck rule's `and` made `or` (half a shoulder became the neck)."""
    coco17 = [[10.0 + i, 100.0 + i] for i in range(17)]
    coco17[gone] = [0.0, 0.0]
    (d,) = K.parse_keypoints(coco17)
    assert not d.present[1] and d.xy[1].tolist() == [0.0, 0.0]


def test_detections_up_to_exactly_one_are_normalised():
    """Pixel or fraction: a detection whose largest coordinate is exactly 1.0 is in [0, 1];
    1.5 is pixels. Mutation caught: the normalised test `max <= 1.0` made `< 1.0`."""
    (kp,) = K.parse_keypoints([[0.5, 1.0]] + [[0.25, 0.75]] * 17)
    assert kp.normalized
    assert kp.to_size((384, 512))[0].tolist() == [192.0, 512.0]
    (px,) = K.parse_keypoints([[0.5, 1.5]] + [[0.25, 0.75]] * 17)
    assert not px.normalized and px.to_size((384, 512))[0].tolist() == [0.5, 1.5]


def test_coordinates_of_exactly_max_coordinate_are_accepted():
    """±1e6 px is still a coordinate; 1e6 + 0.5 is refused.
    Mutation caught: the far test `abs > MAX_COORDINATE` made `>=`."""
    (kp,) = K.parse_keypoints([[1e6, 5.0], [-1e6, 7.0]] + [[10.0, 10.0]] * 16)
    assert kp.xy[:2].tolist() == [[1e6, 5.0], [-1e6, 7.0]]
    with pytest.raises(K.PoseFormatError, match="coordinates must lie within"):
        K.parse_keypoints([[1e6 + 0.5, 5.0]] + [[10.0, 10.0]] * 17)


def test_heatmap_peak_is_one_over_one_plus_float32_eps():
    """On the grid the reference's peak is 1 / (1 + 2^-23), which float32 keeps below 1.
    Mutation caught: the float32 eps dropped from the normalisation."""
    pts = np.zeros((18, 2))
    pts[0] = (5, 7)
    maps = P.keypoint_heatmaps(pts, (16, 16))
    assert maps[0, 7, 5].item() == np.float32(0.9999999)
    assert maps[0, 7, 5].item() < 1.0


def test_skeleton_draws_a_keypoint_on_the_left_edge():
    """(0, 30) is present (only x <= 0 and y <= 0 is missing): its dot, red for the nose, is drawn.
    Mutation caught: the preview's present test `any(> 0)` made `all(> 0)`."""
    pts = np.zeros((18, 2))
    pts[0] = (0, 30)
    img = P.render_skeleton(pts, (64, 64))
    assert img[30, 2].tolist() == [1.0, 0.0, 0.0]


def test_skeleton_dots_keep_their_size_on_small_images():
    """Below 384x512 nothing shrinks: the dot radius stays 4 px (at 192x256 it would be 2).
    Mutation caught: the scale's clamp max(1, ...) dropped."""
    pts = np.zeros((18, 2))
    pts[0] = (96, 128)
    img = P.render_skeleton(pts, (192, 256))
    assert img[128, 99].tolist() == [1.0, 0.0, 0.0]  # 3 px from the centre
    assert not img[128, 101].any()  # 5 px: outside


def test_skeleton_limbs_are_drawn_at_sixty_percent():
    """The neck-right shoulder limb is OpenPose red at 60 %: 153 / 255 = 0.6.
    Mutation caught: the limbs' 0.6 dimming dropped."""
    pts = np.zeros((18, 2))
    pts[1], pts[2] = (20, 32), (44, 32)
    img = P.render_skeleton(pts, (64, 64))
    assert img[32, 32].tolist() == pytest.approx([0.6, 0.0, 0.0], abs=1e-6)


def test_exactly_the_budget_is_allowed():
    """2 GiB exactly (16384 x 8192 pixels x 4 channels x 4 bytes = 2^31) fits; one row more does not.
    Mutation caught: the budget test `need <= MAX_NODE_BYTES` made `<`."""
    from fashion_rag.inpaint.budget import TooLargeError, check_budget

    check_budget("a test", 1, (16384, 8192), 4, "advice")
    check_budget("a test", 2, (8192, 8192), 4, "advice")
    with pytest.raises(TooLargeError, match=r"^a test of 1 frame\(s\) at 16384x8193 would take 2\.00 GiB"):
        check_budget("a test", 1, (16384, 8193), 4, "advice")


@pytest.mark.parametrize("frames,size,gib,fit", [(2, (16384, 8192), "4.00", 1), (3, (8192, 6000), "2.20", 2)])
def test_the_frames_that_fit_are_counted_down_to_exactly_one(frames, size, gib, fit):
    """The whole message, written out, for frames of 4 float32 channels:
    - 16384 x 8192 pixels are 2^31 bytes a frame: two take 4 GiB, exactly one fits;
    - 8192 x 6000 pixels are 786,432,000 bytes a frame: 2^31 / that is 2.73, so 2 fit (not 3),
      and three take 2.20 GiB (two are allowed).
    Mutations caught: `if fit` made `if fit > 1` (it said one frame is already too large); the
    count of frames that fit rounded to nearest (it said 3 fit)."""
    from fashion_rag.inpaint.budget import TooLargeError, check_budget

    check_budget("a test", fit, size, 4, "advice")
    with pytest.raises(TooLargeError) as err:
        check_budget("a test", frames, size, 4, "advice")
    w, h = size
    assert str(err.value) == (
        f"a test of {frames} frame(s) at {w}x{h} would take {gib} GiB (4 float32 channels per pixel), more "
        f"than the 2 GiB a node may allocate; at most {fit} frame(s) fit at {w}x{h}: advice")


def test_one_frame_too_large_names_the_pixels_that_fit():
    """2^31 bytes / (21 channels x 4 bytes) = 25,565,281 pixels.
    Mutation caught: the pixel count leaves out the 4 bytes of a float32."""
    with pytest.raises(ValueError) as err:
        P.pose_heatmaps([K.Keypoints.none()], (8192, 8192))
    assert "one frame at 8192x8192 is already too large (at most 25,565,281 pixels per frame)" in str(
        err.value)


# --- the node's inputs: which keypoints it reads (mutation pass) ---------------------------------


def _pose_node(harness):
    import importlib

    return importlib.import_module(f"{harness.pack.__name__}.nodes.pose").FashionRAGPoseFromKeypoints


def _nose_peak(pose: torch.Tensor, frame: int = 0) -> tuple[int, int]:
    """(x, y) of the nose heatmap's peak."""
    y, x = divmod(int(pose[frame, 0].argmax()), pose.shape[-1])
    return x, y


def _points(nose, row: float = 0.8, scale=(1, 1)) -> np.ndarray:
    """18 keypoints, all present: the nose at `nose`, the rest on a row at `row` (times `scale`)."""
    pts = np.array([[0.1 + 0.04 * i, row] for i in range(18)]) * scale
    pts[0] = nose
    return pts


def test_pose_node_prefers_a_connected_pose_keypoint_over_the_json(comfy_runtime):
    """Both given: the POSE_KEYPOINT (normalised, nose at 0.5, 0.25 -> pixel 48, 32 of 96x128) is
    used, not the JSON (nose at pixel 20, 100).
    Mutation caught: the JSON read first whenever it is not empty."""
    node = _pose_node(comfy_runtime)
    text = json.dumps(_openpose(_points((20, 100), scale=(96, 128))))
    pose, _, _ = node.execute(text, 96, 128, pose_keypoint=[_openpose(_points((0.5, 0.25)))])
    assert _nose_peak(pose) == (48, 32)
    pose, _, _ = node.execute(text, 96, 128)  # alone, the JSON is read
    assert _nose_peak(pose) == (20, 100)


def test_source_size_leaves_normalised_keypoints_alone(comfy_runtime):
    """source_width/height rescale pixel coordinates only: normalised POSE_KEYPOINT coordinates
    (nose at 0.25, 0.75) land at 0.25 x 96 = 24, 0.75 x 128 = 96 whatever source size is given.
    Mutation caught: normalised keypoints also treated as pixels of the source frame."""
    node = _pose_node(comfy_runtime)
    frames = [_openpose(_points((0.25, 0.75)))]
    pose, _, _ = node.execute("", 96, 128, pose_keypoint=frames, source_width=384, source_height=512)
    assert _nose_peak(pose) == (24, 96)


def test_pose_node_reads_the_chosen_person(comfy_runtime):
    """Two people in one OpenPose frame (pixels of the 96x128 target): person_index 1 is the
    second one (nose at 70, 40), 0 the first (nose at 30, 20).
    Mutation caught: the node's person_index ignored (always person 0)."""
    node = _pose_node(comfy_runtime)
    first, second = _points((30, 20), 0.9, (96, 128)), _points((70, 40), 0.8, (96, 128))
    people = [{"pose_keypoints_2d": [v for x, y in pts for v in (x, y, 1.0)]} for pts in (first, second)]
    text = json.dumps({"people": people})
    assert _nose_peak(node.execute(text, 96, 128, person_index=1)[0]) == (70, 40)
    assert _nose_peak(node.execute(text, 96, 128, person_index=0)[0]) == (30, 20)
