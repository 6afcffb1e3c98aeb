"""Converts a Ruyi checkpoint in the ORIGINAL hub layout into a diffusers-format pipeline folder.

    python scripts/convert_ruyi_to_diffusers.py --checkpoint models/Ruyi-Mini-7B --output Ruyi-Mini-7B-diffusers

The conversion rules live in `diffusers_ruyi/loaders/original_checkpoint.py` (shared with `from_pretrained`);
this script only loads and saves. The output is written to a temporary folder and renamed when complete, so an
interrupted run never leaves a half-written pipeline.
"""

import argparse
import os
import shutil
import tempfile

import torch
from safetensors import SafetensorError

from diffusers_ruyi import RuyiImageToVideoPipeline
from diffusers_ruyi.cli import output_folder_problem
from diffusers_ruyi.loaders.model_loading import check_max_shard_size


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="Folder in the original layout, or a hub id.")
    parser.add_argument("--output", required=True, help="Folder to write (must not exist unless --overwrite).")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="Dtype of the transformer, image encoder and control embeddings (the VAE stays float32).",
    )
    parser.add_argument("--max-shard-size", default="5GB", help="Shard size of the saved weights.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    args = parser.parse_args(argv)

    if os.path.exists(args.output) and not args.overwrite:
        parser.error(f"--output {args.output!r} exists; pass --overwrite to replace it.")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        parser.error(f"--output {args.output!r} is a file; give a folder name.")
    output = os.path.realpath(args.output)
    # --overwrite deletes the output folder: never the working folder (or one above it) nor the checkpoint's.
    for what, folder in (("the current folder", os.getcwd()), ("--checkpoint", args.checkpoint)):
        folder = os.path.realpath(folder)
        if os.path.exists(folder) and (folder == output or folder.startswith(output.rstrip(os.sep) + os.sep)):
            parser.error(f"--output {args.output!r} is or holds {what}, which --overwrite would delete.")
    checkpoint = os.path.realpath(args.checkpoint)
    if os.path.exists(args.output) and os.path.isdir(checkpoint) and output.startswith(checkpoint + os.sep):
        # Replacing it would delete a part of the checkpoint (its transformer/, say) before it is read again.
        parser.error(f"--output {args.output!r} is inside --checkpoint, which --overwrite would damage.")
    parent = os.path.dirname(os.path.abspath(args.output))
    problem = output_folder_problem(parent)  # before loading: a bad --output must not cost a load of the checkpoint
    if problem:
        parser.error(f"--output {args.output!r} {problem}.")
    try:  # the check save_pretrained makes, before the load
        check_max_shard_size(args.max_shard_size)
    except (TypeError, ValueError):
        parser.error(f"--max-shard-size must be a positive size such as 5GB or 500MB, got {args.max_shard_size!r}.")
    dtype = {"default": DTYPES[args.dtype], "vae": torch.float32}
    try:
        pipe = RuyiImageToVideoPipeline.from_pretrained(args.checkpoint, dtype=dtype)
    except Exception as e:  # a mistyped path, a broken checkpoint or config: one line, not a traceback
        reason = " ".join(str(e).split())
        if not isinstance(e, (OSError, ValueError)):  # raised by diffusers or torch on a bad config value
            reason = f"{type(e).__name__}: {reason}"
        parser.error(f"--checkpoint {args.checkpoint!r} could not be loaded: {reason}")

    os.makedirs(parent, exist_ok=True)  # only now: a failed load leaves no new folder behind
    tmp = tempfile.mkdtemp(prefix=".ruyi-convert-", dir=parent)
    try:
        # mkdtemp creates the folder 0700; give the result the permissions a plain `mkdir` would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        pipe.save_pretrained(tmp, max_shard_size=args.max_shard_size)
        replaced = None
        if os.path.exists(args.output):
            # Moved aside, not deleted first: should the rename fail, the old output is put back whole.
            replaced = tempfile.mkdtemp(prefix=".ruyi-convert-old-", dir=parent)
            os.replace(args.output, os.path.join(replaced, "output"))
        try:
            os.replace(tmp, args.output)
        except OSError:
            if replaced is not None:
                os.replace(os.path.join(replaced, "output"), args.output)
                os.rmdir(replaced)
            raise
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)  # the new output is in place whatever is left of this
    except (OSError, SafetensorError) as e:  # a full disk (safetensors' own error), a folder that appeared meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"{parser.prog}: error: --output {args.output!r} could not be written: {e}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"Wrote a diffusers-format Ruyi pipeline to {args.output}")


if __name__ == "__main__":
    main()
