"""Mutation pass over catalog scanning (catalog.py): folder walks, ids, categories, captions and
metadata rows, each rule at its edge. Expected values are literals worked out by hand; the
images are written with PIL."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fashion_rag.retrieval.catalog import scan_catalog


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 12), (200, 0, 0)).save(path)
    return path


def test_a_folder_scan_reads_upper_case_suffixes_and_skips_hidden_folders_and_files(tmp_path):
    """Mutations caught: the suffix compared as written ('.PNG' not an image), hidden folders
    walked ('.cache/'), hidden files read ('.x.png')."""
    _png(tmp_path / "tops" / "A.PNG")
    _png(tmp_path / "tops" / ".x.png")
    _png(tmp_path / ".cache" / "tops" / "b.png")
    _png(tmp_path / "tops" / ".hidden" / "c.png")
    cat = scan_catalog(tmp_path)
    assert [(i.id, i.path, i.category) for i in cat.items] == [("A", "tops/A.PNG", "upper_body")]


def test_colliding_stems_keep_the_path_without_its_suffix_as_id(tmp_path):
    """'a.png' and 'a.jpg' share the stem 'a': each is known by its path less the suffix.
    Mutation caught: the whole path, suffix included, as id."""
    _png(tmp_path / "dresses" / "a.png")
    _png(tmp_path / "dresses" / "a.jpg")
    _png(tmp_path / "dresses" / "b.v2.png")
    cat = scan_catalog(tmp_path)
    assert [(i.id, i.path) for i in cat.items] == [
        ("dresses/a", "dresses/a.jpg"), ("dresses/a", "dresses/a.png"), ("b.v2", "dresses/b.v2.png")]


def test_the_deepest_folder_naming_a_category_wins_else_the_parent(tmp_path):
    """'dresses/tops/x.png': the deepest named folder (tops) wins over the shallower one;
    'shop/misc/y.png': no folder names a category, so the parent's own name, 'misc', not 'shop'.
    Mutations caught: folders read from the top down, and the top folder's name as fallback."""
    _png(tmp_path / "dresses" / "tops" / "x.png")
    _png(tmp_path / "shop" / "misc" / "y.png")
    _png(tmp_path / "skirts" / "misc" / "z.png")
    cat = scan_catalog(tmp_path)
    assert {i.id: i.category for i in cat.items} == {"x": "upper_body", "y": "misc", "z": "lower_body"}


def test_a_sidecar_caption_is_one_line_of_single_spaces_and_at_most_64_kb(tmp_path):
    """A caption file over 64 kB is read to its first 65,536 bytes. Mutations caught: the whole
    file read, and the whitespace left as written (tabs, newlines, runs of spaces)."""
    _png(tmp_path / "tops" / "a.png")
    _png(tmp_path / "tops" / "b.png")
    (tmp_path / "tops" / "a.txt").write_text("\tred\n\nstriped   top \n")
    (tmp_path / "tops" / "b.txt").write_text("w " * 40_000)  # 80,000 bytes: 32,768 words read
    cat = scan_catalog(tmp_path)
    by_id = {i.id: i.caption for i in cat.items}
    assert by_id["a"] == "red striped top"
    assert by_id["b"] == " ".join(["w"] * 32_768)


def _meta(tmp_path: Path, text: str, name: str = "m.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_metadata_categories_are_canonical_or_the_shops_own_text_or_the_folders(tmp_path):
    """'Tops ' names upper_body; 'Scarves' names none and stays as written, trimmed; a row without
    a category takes its folder's; a 'type' column and a 'sku' id are read. Mutations caught: the
    category kept as written ('Tops'), the folder's category dropped for a blank cell, values not
    trimmed, 'sku' missing from the id columns."""
    _png(tmp_path / "img" / "skirts" / "1.png")
    _png(tmp_path / "img" / "2.png")
    _png(tmp_path / "img" / "3.png")
    meta = _meta(tmp_path, "sku,file,type,title\n"
                           " s1 , img/skirts/1.png ,,  pleated skirt \n"
                           "s2,img/2.png, Tops ,tee\n"
                           "s3,img/3.png, Scarves ,scarf\n")
    cat = scan_catalog(tmp_path, meta)
    assert [(i.id, i.path, i.category, i.caption) for i in cat.items] == [
        ("s1", "img/skirts/1.png", "lower_body", "pleated skirt"),
        ("s2", "img/2.png", "upper_body", "tee"),
        ("s3", "img/3.png", "Scarves", "scarf"),
    ]


def test_a_row_without_id_takes_the_image_stem_and_a_later_duplicate_is_skipped(tmp_path):
    """Mutations caught: the whole image path as id, and the duplicate id check dropped (the
    later row replacing the earlier one)."""
    _png(tmp_path / "img" / "x.png")
    _png(tmp_path / "img" / "y.png")
    meta = _meta(tmp_path, '{"image": "img/x.png", "caption": "first"}\n'
                           '{"id": "x", "image": "img/y.png", "caption": "second"}\n', "m.jsonl")
    cat = scan_catalog(tmp_path, meta)
    assert [(i.id, i.path, i.caption, i.row) for i in cat.items] == [("x", "img/x.png", "first", 1)]
    assert [(s.id, s.reason, s.row, s.source) for s in cat.skipped] == [("x", "duplicate id", 2, "m.jsonl")]
    assert str(cat.skipped[0]) == "'x' (m.jsonl line 2): duplicate id: id 'x' is used by an earlier row"


def test_a_row_without_an_image_path_is_skipped_as_such(tmp_path):
    """Mutation caught: the reason 'missing' (a file not found) for a row that names no file."""
    _png(tmp_path / "a.png")
    meta = _meta(tmp_path, "id,image\nq,\nr,a.png\n")
    cat = scan_catalog(tmp_path, meta)
    assert [i.id for i in cat.items] == ["r"]
    assert [(s.id, s.reason, s.row) for s in cat.skipped] == [("q", "no image path", 2)]
    assert str(cat.skipped[0]) == "'q' (m.csv line 2): no image path: the row names no image file"


def test_metadata_jsonl_is_preferred_when_both_files_are_there(tmp_path):
    """Mutation caught: metadata.csv looked for first."""
    _png(tmp_path / "a.png")
    _meta(tmp_path, '{"id": "from-jsonl", "image": "a.png"}\n', "metadata.jsonl")
    _meta(tmp_path, "id,image\nfrom-csv,a.png\n", "metadata.csv")
    assert [i.id for i in scan_catalog(tmp_path).items] == ["from-jsonl"]


def test_an_empty_metadata_file_is_an_empty_catalog(tmp_path):
    """A metadata file with no rows at all describes no garment (no column to check). Mutation
    caught: the image column looked up in a first row that is not there (IndexError)."""
    _png(tmp_path / "a.png")
    cat = scan_catalog(tmp_path, _meta(tmp_path, "", "m.jsonl"))
    assert cat.items == [] and cat.skipped == []


def test_a_file_given_as_the_catalog_folder_is_refused(tmp_path):
    """Mutation caught: only a missing root refused (`exists()` for `is_dir()`), so an image file
    given as the catalog scanned as an empty catalog."""
    image = _png(tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match=r"a\.png does not exist \(or is not a folder\)"):
        scan_catalog(image)


def test_a_symlink_inside_the_catalog_keeps_its_own_path_and_folder_category(tmp_path):
    """A row naming 'skirts/b.png', a symlink to 'tops/a.png' inside the catalog: the item's path
    is the row's own, and so its category the 'skirts' folder's. Mutation caught: the path taken
    from the resolved target ('tops/a.png', category upper_body)."""
    _png(tmp_path / "tops" / "a.png")
    (tmp_path / "skirts").mkdir()
    (tmp_path / "skirts" / "b.png").symlink_to(Path("..") / "tops" / "a.png")
    cat = scan_catalog(tmp_path, _meta(tmp_path, "id,image\nb,skirts/b.png\n"))
    assert [(i.id, i.path, i.category) for i in cat.items] == [("b", "skirts/b.png", "lower_body")]
