/** The installed rootfs images, by name. */
import { readCatalog, type ImageEntry } from "./artifacts.js";
import { UnknownImageError } from "./errors.js";

/** Lists the installed built-in images. */
export function listBuiltInImages(): ImageEntry[] {
  return readCatalog();
}

/** The catalog entry of `name`; UnknownImageError (listing what is installed) when there is none. */
export function findImage(name: string): ImageEntry {
  const catalog = readCatalog();
  const hit = catalog.find((i) => i.name === name);
  if (!hit) throw new UnknownImageError(name, catalog.map((i) => i.name));
  return hit;
}
