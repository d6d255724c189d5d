#!/usr/bin/env python
"""Make `data_samples/idrid/`, the small, downscaled IDRiD sample drbook ships, from the full-resolution subset.

    python tools/make_idrid_sample.py                      # from $DRBOOK_IDRID_MINI or ../shared/datasets/idrid_mini
    python tools/make_idrid_sample.py SOURCE --dest DIR    # from another copy of IDRiD's official layout, into DIR

The sample keeps IDRiD's official layout (folder names, CSV names and columns, the CSVs' quirks), so that
`drbook.data.read_idrid_grading` and `read_idrid_segmentation` read it unchanged. What is kept and how it is changed
is fixed below (PER_GRADE, LONG_SIDE, JPEG_QUALITY) and written into the sample's README.txt. The output is
deterministic: the same source and the same Pillow give the same bytes (MANIFEST.sha256 lists them).
"""
from __future__ import annotations
import argparse, os, shutil, sys, textwrap
from pathlib import Path
import numpy as np
from PIL import Image
from drbook.data import (IDRID_LESION_FOLDERS, IDRID_SAMPLE, MANIFEST, idrid_subset_dir, read_idrid_grading,
                         read_idrid_segmentation, read_mask, sha256_file)

PER_GRADE = {'train': 4, 'test': 1}  # graded photographs kept per ICDR grade and split (the lowest ids)
LONG_SIDE = 720  # longest side of every kept photograph and mask, in pixels
JPEG_QUALITY = 90  # quality of the re-encoded photographs
GRADING, SEGMENTATION = 'B. Disease Grading', 'A. Segmentation'
SPLITS = {'train': 'a. Training Set', 'test': 'b. Testing Set'}
CSVS = {'train': 'a. IDRiD_Disease Grading_Training Labels.csv', 'test': 'b. IDRiD_Disease Grading_Testing Labels.csv'}

def small_size(size:tuple)->tuple:
    "(width, height) scaled so that the longest side is LONG_SIDE (never enlarged)."
    f = min(1.0, LONG_SIDE / max(size))
    return max(1, round(size[0] * f)), max(1, round(size[1] * f))

def write_photo(src:Path, dst:Path)->tuple:
    "The photograph at `src` downscaled (Lanczos) and re-encoded as a baseline JPEG at `dst`, metadata dropped; its size."
    with Image.open(src) as im:
        small = im.convert('RGB').resize(small_size(im.size), Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    small.save(dst, 'JPEG', quality=JPEG_QUALITY, optimize=True)
    return small.size

def write_mask(src:Path, dst:Path, size:tuple):
    "The mask at `src` at `size`, as a 1-bit TIFF: a pixel is lesion when any source pixel it covers is."
    m = read_mask(src).astype(np.float32)
    small = np.asarray(Image.fromarray(m).resize(size, Image.BOX)) > 0  # max-pooling: a 3-px microaneurysm survives
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).convert('1').save(dst, 'TIFF', compression='tiff_deflate')

def cut_csv(src:Path, dst:Path, ids:list):
    "The labels CSV at `src` cut to the lines of `ids`, every kept line byte for byte (trailing fields and spaces kept)."
    lines = src.read_bytes().splitlines(keepends=True)
    keep = [l for l in lines[1:] if l.split(b',')[0].strip().decode() in ids]
    if len(keep) != len(ids): raise ValueError(f"{src}: expected one line per kept image {ids}, found {len(keep)}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(lines[0] + b''.join(keep))

def grading_part(src:Path, dest:Path)->list:
    "Copy the kept graded photographs and cut CSVs; lines for the README."
    table, notes = read_idrid_grading(src), []
    for s, n in PER_GRADE.items():
        rows = table[table.split == s].sort_values('image_id').groupby('grade', sort=True).head(n).sort_values('image_id')
        for r in rows.itertuples():
            write_photo(Path(r.image_path), dest/GRADING/'1. Original Images'/SPLITS[s]/f'{r.image_id}.jpg')
        cut_csv(src/GRADING/'2. Groundtruths'/CSVS[s], dest/GRADING/'2. Groundtruths'/CSVS[s], list(rows.image_id))
        kept = ', '.join(f'{i} (grade {g})' for i, g in zip(rows.image_id, rows.grade))
        notes.append(textwrap.fill(f"{SPLITS[s]}: {kept}", 116, initial_indent='  ', subsequent_indent='    '))
    return notes

def segmentation_part(src:Path, dest:Path)->list:
    "Copy every segmentation photograph with its masks, at the photograph's new size; lines for the README."
    table, notes = read_idrid_segmentation(src), []
    for r in table.itertuples():
        size = write_photo(Path(r.image_path), dest/SEGMENTATION/'1. Original Images'/SPLITS[r.split]/f'{r.image_id}.jpg')
        codes = [c for c in IDRID_LESION_FOLDERS if isinstance(getattr(r, f'mask_{c}', None), str)]
        for c in codes:
            out = dest/SEGMENTATION/'2. All Segmentation Groundtruths'/SPLITS[r.split]/IDRID_LESION_FOLDERS[c]/f'{r.image_id}_{c}.tif'
            write_mask(Path(getattr(r, f'mask_{c}')), out, size)
        notes.append(f"  {SPLITS[r.split]}/{r.image_id}: masks {', '.join(codes)}")
    return notes

README = """IDRiD SAMPLE: real colour fundus photographs from the Indian Diabetic Retinopathy Image Dataset (IDRiD),
a small, downscaled selection shipped with drbook so that every user has real photographs without a download.

Licence and attribution
-----------------------
IDRiD dataset (c) by Prasanna Porwal, Samiksha Pachade and Manesh Kokare, licensed under the
Creative Commons Attribution 4.0 International License (LICENSE.txt here; full text in CC-BY-4.0.txt, or
http://creativecommons.org/licenses/by/4.0/). This folder is an adapted copy, under the same licence.

Cite: P. Porwal, S. Pachade, R. Kamble, M. Kokare, G. Deshmukh, V. Sahasrabuddhe, F. Meriaudeau,
"Indian Diabetic Retinopathy Image Dataset (IDRiD): A Database for Diabetic Retinopathy Screening Research",
Data 3(3):25, 2018. https://doi.org/10.3390/data3030025  Dataset: https://idrid.grand-challenge.org/

What was changed
----------------
Made by tools/make_idrid_sample.py from a 48-image subset of IDRiD (4288x2848 photographs from a Kowa VX-10 alpha
camera, 50 degree field), itself a selection of the official release in the official layout.
- Selection: {n_graded} of the 516 graded photographs, the {per_grade} lowest ids per DR grade 0-4 (ICDR) and
  split, and {n_seg} of the 81 segmentation photographs with their lesion masks (no optic-disc masks):
{graded}
{seg}
- Downscaling: every photograph resized (Lanczos) so that its longest side is {long_side} px (was 4288); every mask
  resized to exactly its photograph's new size, a pixel being lesion when any original pixel it covers is (so that
  microaneurysms a few pixels across are kept; they look larger than they are).
- Re-encoding: photographs as baseline JPEG, quality {quality}, metadata dropped; masks as 1-bit TIFF (deflate),
  lesion 1, background 0, where the originals are 1-bit palette TIFFs.
- Labels: the official grading CSVs cut to the kept rows; every kept line is unchanged byte for byte (the training
  CSV's trailing empty columns and the header "Risk of macular edema " with its trailing space are kept).
- Layout: unchanged (folder and file names as in the official release), so that a reader written for IDRiD
  (drbook.data.read_idrid_grading, read_idrid_segmentation) reads it unchanged.

MANIFEST.sha256 lists the SHA-256 of every other file here (check with `sha256sum -c MANIFEST.sha256`).
"""

def write_manifest(folder:Path):
    "MANIFEST.sha256 listing every other file under `folder` (sorted, `sha256sum` format)."
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*') if p.is_file() and p.name != MANIFEST)
    (folder/MANIFEST).write_text(''.join(f'{sha256_file(folder/f)}  {f}\n' for f in files), encoding='utf-8')

def make_sample(src:Path|str, dest:Path|str)->Path:
    "Write the IDRiD sample from the subset at `src` into `dest` (replacing a previous sample there)."
    src, dest = Path(src), Path(dest)
    if not (src/GRADING).is_dir() or not (src/SEGMENTATION).is_dir():
        raise FileNotFoundError(f"no IDRiD subset at {src} (needs '{GRADING}' and '{SEGMENTATION}'; set DRBOOK_IDRID_MINI)")
    if dest.exists() and not (dest/MANIFEST).is_file():
        raise FileExistsError(f"{dest} exists and holds no {MANIFEST}: not a previous sample, so it is left alone")
    tmp = dest.with_name(f'.{dest.name}.building'); shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
    graded, seg = grading_part(src, tmp), segmentation_part(src, tmp)
    for name in ('LICENSE.txt', 'CC-BY-4.0.txt'): shutil.copyfile(src/name, tmp/name)
    (tmp/'README.txt').write_text(README.format(
        n_graded=sum(PER_GRADE.values()) * 5, per_grade=' and '.join(f'{n} ({s})' for s, n in PER_GRADE.items()),
        n_seg=len(seg), graded='\n'.join(graded), seg='\n'.join(seg), long_side=LONG_SIDE, quality=JPEG_QUALITY), encoding='utf-8')
    for p in tmp.rglob('*'): p.chmod(0o755 if p.is_dir() else 0o644)
    write_manifest(tmp)
    if dest.exists(): shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest

def main(argv:list|None=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('source', nargs='?', default=str(idrid_subset_dir()), help='the IDRiD subset (official layout)')
    ap.add_argument('--dest', default=str(IDRID_SAMPLE), help='folder to write (default: data_samples/idrid)')
    args = ap.parse_args(argv)
    dest = make_sample(args.source, args.dest)
    size = sum(p.stat().st_size for p in dest.rglob('*') if p.is_file())
    print(f'IDRiD sample written to {dest}: {sum(1 for p in dest.rglob("*") if p.is_file())} files, {size / 1e6:.2f} MB')
    return 0

if __name__ == '__main__': sys.exit(main())
