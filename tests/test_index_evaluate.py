"""`index evaluate` (issue 22): recall@k and precision@k of a labelled query set, per category,
equal to a hand count on a toy catalog whose rankings are known: six garments, two per category,
with one-colour pictures and distinct captions (BM25 puts the garment sharing the query's colour
first; a stored garment's own picture is its own nearest image at cosine 1).

R@k: share of queries with a relevant garment in the top k; P@k: mean share of each query's
relevant garments found in the top k (the paper's, docs/metrics.md). Each query is ranked within
its category (its category column, else its first relevant garment's), which holds two garments:
at k = 2 every relevant garment of that category is found."""

from __future__ import annotations

import json

import pytest
from cli_runs import run_cli
from PIL import Image

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

GARMENTS = [("top_red", "upper_body", "red cotton top", (200, 30, 30)),
            ("top_blue", "upper_body", "blue wool top", (30, 30, 200)),
            ("skirt_green", "lower_body", "green pleated skirt", (30, 160, 30)),
            ("jeans_black", "lower_body", "black denim jeans", (20, 20, 20)),
            ("dress_white", "dresses", "white linen dress", (240, 240, 240)),
            ("dress_pink", "dresses", "pink silk dress", (240, 150, 190))]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    catalog = root / "catalog"
    catalog.mkdir()
    rows = []
    for gid, category, caption, colour in GARMENTS:
        Image.new("RGB", (384, 512), colour).save(catalog / f"{gid}.png")
        rows.append(json.dumps({"id": gid, "image": f"{gid}.png", "category": category, "caption": caption}))
    (catalog / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    weights = write_tiny_encoder_weights(root / "tiny.safetensors")
    queries = root / "queries"
    queries.mkdir()
    for gid in ("top_red", "dress_pink"):
        Image.open(catalog / f"{gid}.png").save(queries / f"{gid}.png")
    (queries / "text.csv").write_text(
        "text,relevant,category\n"
        '"red top","skirt_green, top_red",upper_body\n'  # 1 of 2 at 1 and 2 (the skirt is no top)
        '"blue top","top_red, top_blue",\n'        # 1 of 2 at 1, both at 2
        "green skirt,jeans_black,lower_body\n"     # missed at 1, found at 2
        "pink dress,dress_white,\n")               # missed at 1, found at 2
    (queries / "image.csv").write_text(
        "image,relevant\n"
        "top_red.png,top_red\n"                    # itself: found at 1
        "dress_pink.png,dress_white\n")            # itself first: missed at 1, found at 2
    (queries / "escape.csv").write_text("image,relevant\n../catalog/top_red.png,top_red\n")
    (queries / "unknown.csv").write_text("text,relevant\nred top,no_such_garment\n")
    build_index(scan_catalog(catalog), root / "shop", GarmentEncoder(weights, TINY_ARCH))
    return root, weights


def _rows(result: dict) -> dict[str, dict]:
    assert result["rc"] == 0, result["stderr"]
    return {row.pop("category"): row for row in json.loads(result["stdout"])}


def test_recall_and_precision_equal_a_hand_count(toy):
    """Mutations caught: the query not ranked within its category (k=2 then misses); the category
    column ignored for the grouping; --ks not passed on (failed: yes, each)."""
    root, weights = toy
    shop, q = str(root / "shop"), root / "queries"
    text, image, table = run_cli([
        ["index", "evaluate", shop, str(q / "text.csv"), "--mode", "caption", "--ks", "2,1", "--json"],
        ["index", "evaluate", shop, str(q / "image.csv"), "--mode", "image", "--weights", str(weights),
         "--ks", "1,2", "--json"],
        ["index", "evaluate", shop, str(q / "text.csv"), "--mode", "caption", "--ks", "1"]], deadline=120)
    assert _rows(text) == {
        "upper_body": {"queries": 2, "R@1": 1.0, "P@1": 0.5, "R@2": 1.0, "P@2": 0.75},
        "lower_body": {"queries": 1, "R@1": 0.0, "P@1": 0.0, "R@2": 1.0, "P@2": 1.0},
        "dresses": {"queries": 1, "R@1": 0.0, "P@1": 0.0, "R@2": 1.0, "P@2": 1.0},
        "all": {"queries": 4, "R@1": 0.5, "P@1": 0.25, "R@2": 1.0, "P@2": 0.875},
    }
    assert _rows(image) == {
        "upper_body": {"queries": 1, "R@1": 1.0, "P@1": 1.0, "R@2": 1.0, "P@2": 1.0},
        "dresses": {"queries": 1, "R@1": 0.0, "P@1": 0.0, "R@2": 1.0, "P@2": 1.0},
        "all": {"queries": 2, "R@1": 0.5, "P@1": 0.5, "R@2": 1.0, "P@2": 1.0},
    }
    assert table["rc"] == 0 and table["stdout"].splitlines() == [
        "category    queries    R@1    P@1",
        "upper_body        2  1.000  0.500",
        "lower_body        1  0.000  0.000",
        "dresses           1  0.000  0.000",
        "all               4  0.500  0.250"]


def test_bad_query_files_get_one_line(toy):
    root, weights = toy
    shop, q = str(root / "shop"), root / "queries"
    escape, unknown, no_file, bad_ks = run_cli([
        ["index", "evaluate", shop, str(q / "escape.csv"), "--weights", str(weights)],
        ["index", "evaluate", shop, str(q / "unknown.csv"), "--mode", "caption"],
        ["index", "evaluate", shop, str(q / "nothing.csv"), "--mode", "caption"],
        ["index", "evaluate", shop, str(q / "text.csv"), "--mode", "caption", "--ks", "0,30"]], deadline=120)
    for r, said in ((escape, "line 2"), (unknown, "no_such_garment"), (no_file, "nothing.csv"),
                    (bad_ks, "--ks must list whole numbers from 1 to 20")):
        assert r["rc"] == 2 and said in r["stderr"], r["stderr"]
        assert len(r["stderr"].strip().splitlines()) == 1, r["stderr"]


# --------------------------------------------------------------------------------------------
# In-process checks (fashion_rag.cli.main, read_queries): the messages, defaults and options
# a subprocess run above leaves untested. Each takes well under a second.
# --------------------------------------------------------------------------------------------

def _main(capsys, *args: str) -> tuple[int, str, str]:
    from fashion_rag.cli import main

    rc = main(["index", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_query_files_that_cannot_be_read_are_refused_naming_file_line_and_fix(tmp_path):
    """Each bad query file is refused with a message naming the file (and the line) and the fix.
    Mutations caught: the header check's `or` made `and` (a file without 'relevant' read on, then
    refused row by row); the no-text-no-image check dropped; the category check dropped (an
    unknown category then taken from the first relevant garment); the empty 'relevant' check
    dropped; `where` without the file's path."""
    from fashion_rag.evaluation.labelled_queries import read_queries

    cases = {
        "no_relevant.csv": ("text,category\nred top,upper_body\n",
                            "needs a header row with 'relevant' and 'text' and/or 'image' columns "
                            "(found: category, text)"),
        "neither.csv": ("text,image,relevant\nred top,,top_red\n , ,top_blue\n",
                        "line 3: no text and no image: give the query"),
        "shoes.csv": ("text,relevant,category\nred top,top_red,shoes\n",
                      "line 2: category 'shoes' is not one of upper_body, lower_body, dresses"),
        "no_ids.csv": ('text,relevant\nred top,top_red\nblue top," , "\n',
                       "line 3: no relevant garment ids: list the garments that answer the query"),
        # A header alone (was: "needs a header row ... (found: no rows)", the header it has).
        "header_only.csv": ("text,relevant,category\n",
                            "holds no queries: add a row per query under the header"),
        "empty.csv": ("", "holds no queries"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError) as err:
            read_queries(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}") and message in str(err.value), str(err.value)


def test_a_query_without_a_category_is_counted_under_its_first_relevant_garment(toy, tmp_path, capsys):
    """No category column: the query is ranked and counted in the category of the first garment
    of its 'relevant' list (lower_body here), where only the skirt of the two can be found: at
    k = 2 both lower_body garments are returned, so R@2 = 1 and P@2 = 1/2 (hand count).
    Mutation caught: the category taken from the last relevant garment (upper_body: P@2 = 1/2
    but counted under upper_body)."""
    root, _ = toy
    (tmp_path / "q.csv").write_text('text,relevant\nred top,"skirt_green, top_red"\n')
    rc, out, err = _main(capsys, "evaluate", str(root / "shop"), str(tmp_path / "q.csv"), "--mode", "caption",
                         "--ks", "2", "--json")
    assert rc == 0, err
    assert json.loads(out) == [{"category": "lower_body", "queries": 1, "R@2": 1.0, "P@2": 0.5},
                               {"category": "all", "queries": 1, "R@2": 1.0, "P@2": 0.5}]


def test_default_ks_go_up_to_20_and_the_table_lists_them_in_order(toy, capsys):
    """--ks left out: 1, 3, 5, 10 and 20 (each category holds two garments, so from k = 2 every
    relevant garment of a query's category is found: R@k = 1 and P@k as at k = 2 in the hand count
    above); --ks 20 alone is allowed; the table's columns follow k upwards whatever order --ks
    gives. Mutations caught: the --ks default without 20; the bound check `k < MAX_K` (20
    refused); the k values not sorted (the table's columns in the given order)."""
    root, _ = toy
    shop, text = str(root / "shop"), str(root / "queries" / "text.csv")
    rc, out, err = _main(capsys, "evaluate", shop, text, "--mode", "caption", "--json")
    assert rc == 0, err
    everything = json.loads(out)[-1]
    assert list(everything) == ["category", "queries", "R@1", "P@1", "R@3", "P@3", "R@5", "P@5", "R@10",
                                "P@10", "R@20", "P@20"]
    assert everything["R@20"] == 1.0 and everything["P@20"] == 0.875 and everything["P@1"] == 0.25
    rc, out, err = _main(capsys, "evaluate", shop, text, "--mode", "caption", "--ks", "20", "--json")
    assert rc == 0, err
    assert json.loads(out)[-1] == {"category": "all", "queries": 4, "R@20": 1.0, "P@20": 0.875}
    rc, out, err = _main(capsys, "evaluate", shop, text, "--mode", "caption", "--ks", "5,1")
    assert rc == 0, err
    assert out.splitlines()[0] == "category    queries    R@1    P@1    R@5    P@5"
    assert out.splitlines()[-1] == "all               4  0.500  0.250  1.000  0.875"


def test_unknown_ids_and_missing_weights_name_the_fix(toy, tmp_path, capsys):
    """An unknown relevant id names the line, the id, the index and the fix; a query encoded
    without --weights names the weights file to pass and the way out (--mode caption).
    Mutations caught: the unknown-id message without its remedy; the --weights message without
    "--mode caption"."""
    root, _ = toy
    shop = str(root / "shop")
    rc, out, err = _main(capsys, "evaluate", shop, str(root / "queries" / "unknown.csv"), "--mode", "caption")
    assert (rc, out) == (2, "")
    assert err == ("[index] error: line 2 of the query file: relevant id(s) no_such_garment are not in index "
                   "'shop': fix the ids or rebuild the index\n")
    for command in (["evaluate", shop, str(root / "queries" / "text.csv")], ["query", shop, "red top"]):
        rc, out, err = _main(capsys, *command)
        assert (rc, out) == (2, "") and len(err.splitlines()) == 1, err
        assert "pass --weights" in err and "tiny.safetensors" in err and "or use --mode caption" in err, err


def test_image_weight_is_passed_on_to_rows_with_a_text_and_a_picture(toy, tmp_path, capsys):
    """A row with a text and a picture ranks by (1 - w) text cosine + w image cosine. The
    picture is top_red's own (cosine 1 with its stored embedding: first at w = 1); the text is
    one whose text cosine (numpy over the stored embeddings) ranks top_blue above top_red, so
    at w = 0 top_red, the relevant garment, is missed at k = 1.
    Mutations caught: evaluate_index ignoring image_weight (the default 0.5 always); the CLI
    not passing --image-weight on."""
    import numpy as np

    from fashion_rag.retrieval.index import load_index

    root, weights = toy
    index = load_index(root / "shop", GarmentEncoder(weights, TINY_ARCH))
    emb = np.asarray(index.embeddings, dtype=np.float64)
    red, blue = index.position("top_red"), index.position("top_blue")
    texts = ["blue wool top", "a blue top", "blue", "wool", "a top", "a shirt", "a sweater"]
    cosines = {t: emb @ index.encoder.encode_texts([t])[0].astype(np.float64) for t in texts}
    text = next((t for t in texts if cosines[t][blue] > cosines[t][red]), None)
    assert text is not None, "no text of the list ranks top_blue above top_red: pick another"
    Image.open(root / "catalog" / "top_red.png").save(tmp_path / "top_red.png")
    (tmp_path / "q.csv").write_text(f"text,image,relevant\n{text},top_red.png,top_red\n")
    found = {}
    for w in ("1", "0"):
        rc, out, err = _main(capsys, "evaluate", str(root / "shop"), str(tmp_path / "q.csv"), "--mode",
                             "image", "--weights", str(weights), "--image-weight", w, "--ks", "1", "--json")
        assert rc == 0, err
        found[w] = json.loads(out)[-1]["R@1"]
    assert found == {"1": 1.0, "0": 0.0}


def test_evaluate_index_ranks_to_the_largest_k_whatever_their_order(toy):
    """evaluate_index (the library call, ks in any order) retrieves max(ks) garments per query:
    the hand count of text.csv at k = 2 and 1 (the first test) with ks = (2, 1).
    Mutation caught: the search's k taken as the last of ks (1 here: R@2 as R@1)."""
    from fashion_rag.evaluation.labelled_queries import evaluate_index, read_queries
    from fashion_rag.retrieval.index import load_index

    root, _ = toy
    rows = evaluate_index(load_index(root / "shop"), read_queries(root / "queries" / "text.csv"), ks=(2, 1),
                          mode="caption")
    assert rows[-1] == {"category": "all", "queries": 4, "R@2": 1.0, "P@2": 0.875, "R@1": 0.5, "P@1": 0.25}


def test_many_unknown_ids_are_listed_five_at_most(toy):
    """A query with six unknown ids (after a known one) names the first five, in order.
    Mutation caught: the unknown ids listed one only."""
    from fashion_rag.evaluation.labelled_queries import LabelledQuery, evaluate_index
    from fashion_rag.retrieval.index import load_index

    root, _ = toy
    ids = ("top_red", "u1", "u2", "u3", "u4", "u5", "u6")
    with pytest.raises(ValueError) as err:
        query = LabelledQuery(7, "red top", None, ids, None)
        evaluate_index(load_index(root / "shop"), [query], mode="caption")
    assert str(err.value) == ("line 7 of the query file: relevant id(s) u1, u2, u3, u4, u5 are not in index "
                              "'shop': fix the ids or rebuild the index")


def test_device_places_the_query_encoder_and_a_wrong_one_is_refused_before_any_model_loads(
        toy, capsys, monkeypatch):
    """`--device` for `index query` and `index evaluate` (as for `index build`): cpu gives the
    rows and hits of the default here (a machine without a GPU); a device torch does not have, a
    name that is no device, and --device with --mode caption (nothing encoded) are each one line,
    exit code 2, before any model loads. A text query never loads the image tower; a picture does.
    Mutations caught: --device not checked for queries (cuda:N went through); --device with
    --mode caption accepted; the CLI's encoder made with both towers (the text query held the
    image tower)."""
    import torch

    import fashion_rag.retrieval.index as index_module

    root, weights = toy
    shop, csv = str(root / "shop"), str(root / "queries" / "text.csv")
    made, real = [], index_module.encoder_for

    def spy(*args, **kwargs):  # the real encoder_for, its encoders kept to look at
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(index_module, "encoder_for", spy)
    runs = {}
    for device in ([], ["--device", "cpu"]):
        evaluate = _main(capsys, "evaluate", shop, csv, "--weights", str(weights), "--json", *device)
        query = _main(capsys, "query", shop, "red top", "--weights", str(weights), "--json", *device)
        assert evaluate[0] == query[0] == 0, (evaluate, query)
        runs[tuple(device)] = (json.loads(evaluate[1]), json.loads(query[1]))
    assert runs[()] == runs[("--device", "cpu")] and runs[()][1]
    text_only = made[-1]
    assert text_only.module.visual is None and text_only._visual is None  # the image tower never loaded
    image = _main(capsys, "query", shop, "--image", str(root / "queries" / "top_red.png"), "--weights",
                  str(weights), "--device", "cpu", "--json")
    assert image[0] == 0 and json.loads(image[1])[0]["id"] == "top_red", image
    assert made[-1]._visual is not None and next(made[-1]._visual.parameters()).device.type == "cpu"

    n = torch.cuda.device_count()
    loaded = len(made)
    for extra, message in ((["--device", f"cuda:{n}"], f"--device cuda:{n}: torch sees {n} CUDA GPUs here"),
                           (["--device", "gpu0"], "--device 'gpu0' is not a device to encode on"),
                           (["--device", "cpu", "--mode", "caption"],
                            "--mode caption encodes none: drop --device")):
        for command in (["evaluate", shop, csv], ["query", shop, "red top"]):
            rc, out, err = _main(capsys, *command, "--weights", str(weights), *extra)
            assert (rc, out) == (2, "") and len(err.splitlines()) == 1, (command, extra, err)
            assert message in err, (command, extra, err)
    assert len(made) == loaded  # refused before an encoder was made
