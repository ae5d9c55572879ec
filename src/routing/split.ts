// The read/write split's view of a client's bytes: what the statements in
// a run of client chunks do (read, open a READ ONLY block, or maybe write),
// judged before the chunks are forwarded, so that a transaction is sent
// whole to a standby only when every statement in it is proven to read.
// It walks frame headers itself (the chunks have not reached the session's
// framer yet) and carries a frame that crosses a chunk end to the next
// chunk. A statement frame it cannot read whole (cut by the chunk end) is a
// write: the chunk then waits for a server chosen with all of its bytes.

import { FE } from '../protocol/codes.ts';
import { parseText, queryText } from '../protocol/frontend.ts';
import { ACCESS, type Access, type ReadOnlyClassifier } from '../sql/readonly.ts';

/** The text of a named prepared statement the client made earlier (null: not known). */
export type StatementText = (name: string) => string | null;

export class SplitScanner {
  readonly #classifier: ReadOnlyClassifier;
  readonly #textOf: StatementText;
  /** Bytes of a frame begun in an earlier chunk still to come (it was not a statement frame). */
  #skip = 0;
  /** The start of a header cut by the chunk end (fewer than 5 bytes). */
  #partial: Buffer | null = null;
  /** The text of the last unnamed Parse seen, for the Bind that follows it. */
  #unnamed: string | null = null;
  /** Bytes at the start of the last chunk scanned that end a frame begun before it (see scan). */
  head = 0;

  constructor(classifier: ReadOnlyClassifier, textOf: StatementText) {
    this.#classifier = classifier;
    this.#textOf = textOf;
  }

  /** Starts over at a frame boundary (a new transaction's first chunk). */
  reset(): void {
    this.#skip = 0;
    this.#partial = null;
    this.#unnamed = null;
  }

  /**
   * What the chunks do, worst first: Write if any statement may write,
   * Block if the first opens a READ ONLY block, else Read. Chunks with no
   * statement at all are Read.
   */
  scan(chunks: readonly Buffer[]): Access {
    // Judged as one run: a statement cut between two held chunks is read whole.
    if (chunks.length === 0) return ACCESS.Read;
    return this.#chunk(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
  }

  #chunk(raw: Buffer): Access {
    let buf = raw;
    const carried = this.#partial?.length ?? 0;
    if (this.#partial !== null) {
      buf = Buffer.concat([this.#partial, raw]);
      this.#partial = null;
    }
    let off = 0;
    this.head = 0;
    if (this.#skip > 0) {
      const n = Math.min(this.#skip, buf.length);
      this.#skip -= n;
      off = n;
      this.head = n;
    }
    let verdict: Access = ACCESS.Read;
    let firstStatement = true;
    let begun = carried > 0;
    while (off < buf.length) {
      const type = buf[off] as number;
      const statement = type === FE.Query || type === FE.Parse || type === FE.Bind || type === FE.FunctionCall;
      if (buf.length - off < 5) {
        if (statement) return ACCESS.Write;
        this.#partial = Buffer.from(buf.subarray(off));
        return verdict;
      }
      const len = buf.readInt32BE(off + 1);
      if (len < 4) return ACCESS.Write;
      const end = off + 1 + len;
      if (begun) {
        // The frame whose header began in the previous chunk ends here.
        begun = false;
        this.head = Math.min(end, buf.length) - carried;
      }
      if (end > buf.length) {
        if (statement) return ACCESS.Write;
        this.#skip = end - buf.length;
        return verdict;
      }
      if (statement) {
        const a = this.#statement(type, buf, off, end);
        if (a === ACCESS.Write) return ACCESS.Write;
        if (a !== null) {
          if (a === ACCESS.Block) {
            if (!firstStatement) return ACCESS.Write;
            verdict = ACCESS.Block;
          }
          firstStatement = false;
        }
      }
      off = end;
    }
    return verdict;
  }

  /** The verdict on one statement frame; null for a Bind of the unnamed statement whose Parse was already judged. */
  #statement(type: number, buf: Buffer, start: number, end: number): Access | null {
    if (type === FE.FunctionCall) return ACCESS.Write;
    if (type === FE.Query || type === FE.Parse) {
      const text = type === FE.Query ? queryText(buf, start, end) : parseText(buf, start, end);
      if (text === null) return ACCESS.Write;
      // An empty name (its NUL right after the header): the unnamed statement a later Bind may run.
      if (type === FE.Parse && buf[start + 5] === 0) this.#unnamed = text;
      return this.#classifier.classify(text);
    }
    // Bind: the statement it runs.
    const portalEnd = buf.indexOf(0, start + 5);
    if (portalEnd < 0 || portalEnd >= end) return ACCESS.Write;
    const nameEnd = buf.indexOf(0, portalEnd + 1);
    if (nameEnd < 0 || nameEnd >= end) return ACCESS.Write;
    if (nameEnd === portalEnd + 1) return this.#unnamed === null ? ACCESS.Write : null;
    const text = this.#textOf(buf.toString('latin1', portalEnd + 1, nameEnd));
    return text === null ? ACCESS.Write : this.#classifier.classify(text);
  }
}
