"""Listing inputs: order, labels, groups, hidden and system files, layouts, manifests, lists."""

import os

import pytest
from helpers import photo, write_tree

from embedder.inputs.sources import list_images
from embedder.kernel.errors import FeaturebankError


def test_class_folders_give_sorted_labeled_items_and_skip_hidden_and_system_files(tmp_path):
    write_tree(tmp_path, classes=("b_class", "a_class"), per_class=2)
    photo(7).save(tmp_path / "a_class" / "UPPER.JPG")
    (tmp_path / "a_class" / "nested").mkdir()
    photo(8).save(tmp_path / "a_class" / "nested" / "deep.Png")
    (tmp_path / "a_class" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "a_class" / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "a_class" / "._img00.jpg").write_bytes(b"AppleDouble")
    (tmp_path / "b_class" / "readme.txt").write_text("hello")
    (tmp_path / ".hidden_class").mkdir()
    photo(9).save(tmp_path / ".hidden_class" / "x.jpg")
    listing = list_images(str(tmp_path))
    assert listing.kind == "classes" and listing.labeled
    assert [(i.path, i.label) for i in listing.items] == [
        ("a_class/UPPER.JPG", "a_class"),
        ("a_class/img00.jpg", "a_class"),
        ("a_class/img01.png", "a_class"),
        ("a_class/nested/deep.Png", "a_class"),
        ("b_class/img00.jpg", "b_class"),
        ("b_class/img01.png", "b_class"),
    ]
    assert listing.ignored == 5
    item = listing.items[1]
    st = os.stat(tmp_path / item.path)
    assert (item.size, item.mtime_ns, item.error) == (st.st_size, st.st_mtime_ns, None)


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        photo(i).save(tmp_path / f"{i}.png")
    listing = list_images(str(tmp_path))
    assert listing.kind == "flat" and not listing.labeled
    assert [i.path for i in listing.items] == ["0.png", "1.png", "2.png"]


def test_directory_named_like_an_image_is_reported_not_walked(tmp_path):
    write_tree(tmp_path, classes=("c",), per_class=1)
    (tmp_path / "c" / "album.jpg").mkdir()
    photo(1).save(tmp_path / "c" / "album.jpg" / "inside.jpg")
    items = {i.path: i for i in list_images(str(tmp_path)).items}
    assert items["c/album.jpg"].error.startswith("is a directory")
    assert "c/album.jpg/inside.jpg" not in items


def test_manifest_keeps_its_order_labels_and_groups(tmp_path):
    write_tree(tmp_path / "img", classes=("x",), per_class=3)
    (tmp_path / "m.csv").write_text(
        "path,label,group\nimg/x/img02.jpg,b,g1\nimg/x/img00.jpg,a,g2\nimg/x/gone.jpg,a,g2\n"
    )
    listing = list_images(str(tmp_path / "m.csv"))
    assert listing.kind == "csv"
    assert [(i.path, i.label, i.group) for i in listing.items] == [
        ("img/x/img02.jpg", "b", "g1"),
        ("img/x/img00.jpg", "a", "g2"),
        ("img/x/gone.jpg", "a", "g2"),
    ]
    assert listing.items[2].error == "file not found"


def test_manifest_errors_are_one_clear_line(tmp_path):
    (tmp_path / "nohead.csv").write_text("a.jpg,cat\n")
    with pytest.raises(FeaturebankError, match="must name the columns"):
        list_images(str(tmp_path / "nohead.csv"))
    (tmp_path / "dup.csv").write_text("path,label\na.jpg,cat\nb.jpg,dog\na.jpg,dog\n")
    with pytest.raises(FeaturebankError, match="line 4: a.jpg is listed twice"):
        list_images(str(tmp_path / "dup.csv"))


def test_text_list_of_paths(tmp_path):
    write_tree(tmp_path, classes=("x",), per_class=2)
    (tmp_path / "list.txt").write_text("# a comment\nx/img01.png\n\nx/img00.jpg\n")
    listing = list_images(str(tmp_path / "list.txt"))
    assert [i.path for i in listing.items] == ["x/img01.png", "x/img00.jpg"] and not listing.labeled


def test_missing_or_empty_input_is_an_error(tmp_path):
    with pytest.raises(FeaturebankError, match="input not found"):
        list_images(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FeaturebankError, match="no images in"):
        list_images(str(tmp_path / "empty"))
