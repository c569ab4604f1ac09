/**
 * Picking one image out of an image index or manifest list by platform:
 * os and architecture must match; a variant we ask for must match, and when
 * we name none, an entry without a variant wins over one with (Docker's
 * default arm64 variant is `v8`, so `arm64` and `arm64/v8` are the same).
 */
import type { Platform } from '../config/types.js';
import type { Descriptor } from '../oci/layout-reader.js';

/** The index entry for `platform`, or undefined when there is none. */
export function selectPlatform(manifests: readonly Descriptor[], platform: Platform): Descriptor | undefined {
  const candidates = manifests.filter(
    (m) => m.platform?.os === platform.os && m.platform.architecture === platform.architecture,
  );
  const wanted = normalVariant(platform.architecture, platform.variant);
  if (wanted) return candidates.find((m) => normalVariant(m.platform!.architecture, m.platform!.variant) === wanted);
  return candidates.find((m) => !normalVariant(m.platform!.architecture, m.platform!.variant)) ?? candidates[0];
}

/** `os/arch[/variant]` of each entry, for "no image for …; the index has …". */
export function platformList(manifests: readonly Descriptor[]): string {
  const names = manifests.map((m) => (m.platform ? platformName(m.platform) : 'unknown'));
  return [...new Set(names)].join(', ') || 'none';
}

export function platformName(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

function normalVariant(architecture: string, variant: string | undefined): string | undefined {
  if (architecture === 'arm64' && variant === 'v8') return undefined;
  return variant || undefined;
}
