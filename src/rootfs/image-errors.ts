import { SandboxError } from "../errors.js";

/**
 * Errors of the disk-image layer (QCOW2 reading and writing). They extend
 * SandboxError so callers can catch every library error in one place.
 */

/** The bytes are not a well-formed image (bad magic, tables out of range, bad compressed data). */
export class ImageFormatError extends SandboxError {
  readonly image: string;
  constructor(image: string, problem: string) {
    super(
      "ERR_SANDBOX_IMAGE_FORMAT",
      `${image}: ${problem}; the image is damaged or not a QCOW2 file — check it with \`qemu-img check\` and rebuild or re-download it`,
    );
    this.image = image;
  }
}

/** A well-formed QCOW2 image uses a feature this reader does not implement. */
export class ImageUnsupportedError extends SandboxError {
  readonly image: string;
  readonly feature: string;
  constructor(image: string, feature: string, fix: string) {
    super("ERR_SANDBOX_IMAGE_UNSUPPORTED", `${image}: QCOW2 feature not supported: ${feature}; ${fix}`);
    this.image = image;
    this.feature = feature;
  }
}

/** A caller passed an invalid argument (cluster size, read range, block callback result…). */
export class ImageOptionError extends SandboxError {
  constructor(message: string) {
    super("ERR_SANDBOX_IMAGE_OPTION", message);
  }
}

/** What to tell the user when an image needs converting into something we can read. */
export const CONVERT_HINT =
  "convert it into a standalone image first, e.g. `qemu-img convert -O qcow2 -o compat=1.1,compression_type=zlib in.qcow2 out.qcow2`";
