/**
 * Bytes that crossed the network, for the build report. Counted as they
 * flow, so a blob found in the store, already in the registry, or mounted
 * from another repository counts nothing, and a retried transfer counts twice.
 */
export interface TransferCounters {
  /** Blob and manifest bytes downloaded. */
  pulled: number;
  /** Blob and manifest bytes uploaded. */
  pushed: number;
}

/** Passes `source` through, adding each chunk's length to `counters[field]`. */
export async function* counted(
  source: AsyncIterable<Uint8Array>,
  counters: TransferCounters,
  field: keyof TransferCounters,
): AsyncGenerator<Uint8Array> {
  for await (const chunk of source) {
    counters[field] += chunk.length;
    yield chunk;
  }
}
