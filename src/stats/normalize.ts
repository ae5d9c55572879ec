// Query shapes: a statement text reduced to what stays the same between its
// executions. Owns the normalized text (constants replaced by $n), the
// fingerprint that groups equivalent texts, and the cache that keeps the real
// PostgreSQL parser (libpg-query, WebAssembly) off the path of repeated shapes.
//
// Two rules drive the design:
//   - Cost. Simple-protocol clients send literals inline, so no two texts are
//     alike and a cache keyed by raw text would miss every time. The cache is
//     keyed by the text's tokens with every constant masked (our own lexer,
//     linear and allocation-light), and the parser runs once per such key.
//   - Privacy. The normalized text feeds logs and the audit trail, so it must
//     hold no literal value. libpg-query's normalize keeps comments and leaves
//     literals in places pg_stat_statements never jumbles (COMMENT ON, column
//     DEFAULTs, COPY file names, PREPARE bodies, ALTER SYSTEM ...), so its
//     output is re-tokenized: comments dropped, whitespace collapsed, and every
//     string or number left replaced by a further $n.
//
// describe() never throws: text the parser rejects (or one too long to parse
// at a bounded cost) still gets a shape, from the lexer alone, marked
// parsed=false.

import { createHash } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { fingerprintSync, loadModule, normalizeSync } from 'libpg-query';
import { keyHasConstant, Lexer, shapeKey, TOKEN } from '../sql/lexer.ts';

export interface ShapeId {
  /** 16 lower-case hex digits: libpg-query's fingerprint, or a hash of the lexer-normalized text when not parsed. */
  fingerprint: string;
  /** The text with every constant replaced by $n, comments removed and whitespace collapsed. */
  normalized: string;
  /** True when the PostgreSQL parser produced the shape; false for the lexer-only fallback. */
  parsed: boolean;
}

export interface NormalizerOptions {
  /** Most cached shapes (least recently used evicted first); 0 disables the cache. Default 10,000. */
  cacheSize?: number;
}

const DEFAULT_CACHE_SIZE = 10_000;

/**
 * Longer texts are never given to the parser nor cached: libpg-query's cost
 * grows with the text and its constants (a 100 kB INSERT ... VALUES list
 * takes 30 to 120 ms), and that time is taken from the event loop that forwards
 * traffic. The lexer fallback is linear, and the key of such a text would pin
 * as much memory as the text itself.
 */
export const MAX_PARSE_CHARS = 100_000;

/**
 * Total characters of cached keys and normalized texts. The entry cap alone
 * would let 10,000 long statements pin gigabytes; this keeps the cache to tens
 * of megabytes whatever the statements look like.
 */
const CACHE_BUDGET_CHARS = 16 * 1024 * 1024;

const FINGERPRINT = /^[0-9a-f]{16}$/;

/**
 * The text rebuilt from its tokens: constants (and what the lexer could not
 * read, which may hold one, e.g. an unterminated quote) become $n numbered
 * after the highest $n already there; comments are dropped; whitespace
 * between tokens becomes one space.
 */
export function lexerNormalize(text: string): string {
  let maxParam = 0;
  for (let lexer = new Lexer(text), t = lexer.next(); t !== null; t = lexer.next()) {
    if (t.kind !== TOKEN.PARAM) continue;
    const n = Number(t.value.slice(1));
    if (n > maxParam) maxParam = n;
  }
  let next = maxParam + 1;
  let out = '';
  let prevEnd = -1;
  // Length of `out` up to its last token that is not a ';': trailing
  // terminators are not part of the shape (as in pg_stat_statements).
  let keep = 0;
  for (let lexer = new Lexer(text), t = lexer.next(); t !== null; t = lexer.next()) {
    if (prevEnd >= 0 && t.start > prevEnd) out += ' ';
    prevEnd = t.end;
    if (t.kind === TOKEN.STRING || t.kind === TOKEN.NUMBER || t.kind === TOKEN.ERROR) out += `$${next++}`;
    else out += text.slice(t.start, t.end);
    if (!(t.kind === TOKEN.PUNCT && t.value === ';')) keep = out.length;
  }
  return out.slice(0, keep);
}

function hashFingerprint(normalized: string): string {
  return createHash('sha1').update(normalized).digest('hex').slice(0, 16);
}

function fallback(text: string): ShapeId {
  const normalized = lexerNormalize(text);
  return Object.freeze({ fingerprint: hashFingerprint(normalized), normalized, parsed: false });
}

/** The exact-text cache holds texts up to this length, at most this many. */
const EXACT_MAX_CHARS = 2048;
const EXACT_ENTRIES = 4096;

export class Normalizer {
  // Oldest first: evicted in insertion order (a hit is not moved, which
  // would cost two more map operations on a long key per statement).
  readonly #cache = new Map<string, ShapeId>();
  /** Shapes by exact text (see #rememberText). */
  readonly #exact = new Map<string, ShapeId>();
  readonly #cacheSize: number;
  #cachedChars = 0;
  /** Lookups answered from the cache. */
  hits = 0;
  /** Lookups that had to build a shape (cache misses and texts too long to cache). */
  misses = 0;

  /** libpg-query must be loaded (loadNormalizer does it); until then every text takes the fallback. */
  constructor(opts: NormalizerOptions = {}) {
    const size = opts.cacheSize ?? DEFAULT_CACHE_SIZE;
    this.#cacheSize = size >= 0 ? Math.floor(size) : DEFAULT_CACHE_SIZE;
  }

  /** Number of cached shapes. */
  get cached(): number {
    return this.#cache.size;
  }

  /** The shape of a statement text (which may hold several statements). Never throws. */
  describe(text: string): ShapeId {
    // Prepared statements come back as the very same string: no lexing at all.
    const same = this.#exact.get(text);
    if (same !== undefined) {
      this.hits++;
      return same;
    }
    if (text.length > MAX_PARSE_CHARS) {
      this.misses++;
      return fallback(text);
    }
    const key = shapeKey(text);
    const cache = this.#cache;
    const hit = cache.get(key);
    if (hit !== undefined) {
      this.hits++;
      // A text with literals inline comes back with other values: keeping it
      // by its exact text would only churn that cache (and push out the
      // prepared texts that do come back).
      if (!keyHasConstant(key)) this.#rememberText(text, hit);
      return hit;
    }
    this.misses++;
    const shape = this.#build(text, key);
    if (this.#cacheSize > 0) {
      cache.set(key, shape);
      this.#cachedChars += key.length + shape.normalized.length;
      this.#trim();
    }
    if (!keyHasConstant(key)) this.#rememberText(text, shape);
    return shape;
  }

  /**
   * The exact-text cache: short texts only, emptied when full (texts with a
   * new literal each time pass through it without growing it past its cap).
   */
  #rememberText(text: string, shape: ShapeId): void {
    if (text.length > EXACT_MAX_CHARS || this.#cacheSize === 0) return;
    if (this.#exact.size >= EXACT_ENTRIES) this.#exact.clear();
    this.#exact.set(text, shape);
  }

  /** Empties the cache. */
  clear(): void {
    this.#exact.clear();
    this.#cache.clear();
    this.#cachedChars = 0;
  }

  #build(text: string, key: string): ShapeId {
    // No token at all: libpg-query answers "" with an error message instead
    // of throwing. A NUL would end the text early inside the parser.
    if (key === '' || text.includes('\u0000')) return fallback(text);
    let normalized: string;
    let fingerprint: string;
    try {
      normalized = normalizeSync(text);
      fingerprint = fingerprintSync(text);
    } catch {
      return fallback(text);
    }
    // Some failures (e.g. "memory exhausted" on deep nesting) come back as
    // the result string rather than as an exception.
    if (typeof fingerprint !== 'string' || !FINGERPRINT.test(fingerprint) || typeof normalized !== 'string') return fallback(text);
    return Object.freeze({ fingerprint, normalized: lexerNormalize(normalized), parsed: true });
  }

  #trim(): void {
    const cache = this.#cache;
    while (cache.size > this.#cacheSize || (this.#cachedChars > CACHE_BUDGET_CHARS && cache.size > 1)) {
      const first = cache.entries().next();
      if (first.done === true) break;
      const [key, shape] = first.value;
      cache.delete(key);
      this.#cachedChars -= key.length + shape.normalized.length;
    }
  }
}

/** Loads the PostgreSQL parser (WebAssembly, once per process) and returns a Normalizer using it. */
export async function loadNormalizer(opts?: NormalizerOptions): Promise<Normalizer> {
  // V8's optimizing WebAssembly tier compiles the whole parser in the
  // background and keeps about 100 MB of memory for it; the baseline tier
  // (Liftoff) keeps a few MB and is fast enough for a parser that runs once
  // per new query shape. Measured: RSS 161 MB vs 60 MB after 100 calls, and
  // no slower for the first thousands of calls. It must be set before the
  // module compiles; Postern runs no other WebAssembly on its data path.
  setFlagsFromString('--liftoff-only');
  await loadModule();
  return new Normalizer(opts);
}
