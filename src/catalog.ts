/** The installed rootfs images, by name. */
import { readCatalog, type ImageEntry } from "./artifacts.js";
import { findCatalogImage, type ResolvedImage } from "./images/resolve.js";

/** Lists the built-in images of the platform package (`listImages()` adds imported and built ones). */
export function listBuiltInImages(): ImageEntry[] {
  return readCatalog();
}

/** A catalog image (built-in, imported or built) by name, ready to boot; UnknownImageError lists what is installed. */
export function findImage(name: string): ResolvedImage {
  return findCatalogImage(name);
}
