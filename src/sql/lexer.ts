// SQL tokenizer and statement splitter for the text of Query and Parse
// messages, written from the PostgreSQL "Lexical Structure" chapter
// (https://www.postgresql.org/docs/current/sql-syntax-lexical.html).
//
// This module owns two questions: where the tokens are, and which ';' ends a
// statement. Everything that detects session-level features works on its
// tokens, never on raw text, so a keyword inside a string, a comment, a quoted
// identifier or a dollar-quoted body is never mistaken for a keyword.
//
// It never throws. What PostgreSQL would reject while lexing (an unterminated
// quote or comment, a stray character, a bad escape) becomes an 'error'
// token; PostgreSQL raw-parses a whole Query string before executing any of
// it, so a lexical error anywhere means none of that string runs, and callers
// may treat a statement holding an error token as inert but unknown.
//
// Lexing is linear: every scan moves forward, and the only look-aheads (string
// continuation, UESCAPE) re-read a stretch of blanks at most once more.
//
// Offsets are UTF-16 indexes into the JS string, not byte offsets: the caller
// decodes the message with the client's encoding first. (Client-only encodings
// such as SJIS or BIG5 have ASCII-range trailing bytes, so decoding them as
// UTF-8 would move quote boundaries.)

export const TOKEN = {
  /** Unquoted identifier or keyword; value is ASCII-lower-cased and truncated like PostgreSQL's. */
  IDENT: 'ident',
  /** "Quoted" or U&"quoted" identifier; value is the unescaped name (case kept), truncated. */
  QUOTED_IDENT: 'quoted-ident',
  /** Any string constant: '...', E'...', U&'...', N'...', B'...', X'...', $tag$...$tag$; value is the content. */
  STRING: 'string',
  NUMBER: 'number',
  /** Operator, including '::', ':=', '..' and '=>'; value is its text. */
  OP: 'op',
  /** One of ( ) , ; . [ ] : */
  PUNCT: 'punct',
  /** Positional parameter such as $1; value is its text. */
  PARAM: 'param',
  /** Something PostgreSQL would reject while lexing; value says what. */
  ERROR: 'error',
} as const;
export type TokenKind = (typeof TOKEN)[keyof typeof TOKEN];

export interface Token {
  readonly kind: TokenKind;
  readonly value: string;
  /** Offset of the first character (inclusive). */
  readonly start: number;
  /** Offset after the last character (exclusive). */
  readonly end: number;
}

export interface LexOptions {
  /**
   * PostgreSQL's standard_conforming_strings (on by default since 9.1). When
   * off, backslash escapes apply inside plain '...' strings too, which moves
   * where they end; callers caching by text must then key on this as well.
   */
  readonly standardConformingStrings?: boolean;
}

// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENTIFIER_BYTES = 63;

const TAB = 9;
const LF = 10;
const VT = 11;
const FF = 12;
const CR = 13;
const SPACE = 32;
const DQUOTE = 34;
const DOLLAR = 36;
const AMP = 38;
const SQUOTE = 39;
const PLUS = 43;
const MINUS = 45;
const DOT = 46;
const SLASH = 47;
const ZERO = 48;
const NINE = 57;
const COLON = 58;
const EQUALS = 61;
const STAR = 42;
const BACKSLASH = 92;
const UNDERSCORE = 95;

function isSpace(c: number): boolean {
  return c === SPACE || c === TAB || c === LF || c === CR || c === FF || c === VT;
}

function isDigit(c: number): boolean {
  return c >= ZERO && c <= NINE;
}

function isHexDigit(c: number): boolean {
  return isDigit(c) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);
}

// Every code unit >= 0x80 counts as a letter: PostgreSQL treats each
// high-bit byte as an identifier character, so any non-ASCII character does.
function isIdentStart(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === UNDERSCORE || c >= 0x80;
}

function isIdentCont(c: number): boolean {
  return isIdentStart(c) || isDigit(c) || c === DOLLAR;
}

// The characters operators are made of.
function isOpChar(c: number): boolean {
  switch (c) {
    case 126: // ~
    case 33: // !
    case 64: // @
    case 35: // #
    case 94: // ^
    case 38: // &
    case 124: // |
    case 96: // `
    case 63: // ?
    case 43: // +
    case 45: // -
    case 42: // *
    case 47: // /
    case 37: // %
    case 60: // <
    case 62: // >
    case 61: // =
      return true;
    default:
      return false;
  }
}

// Operator characters that let a multi-character operator end in + or -.
function isOpSpecial(c: number): boolean {
  switch (c) {
    case 126: // ~
    case 33: // !
    case 64: // @
    case 35: // #
    case 37: // %
    case 94: // ^
    case 38: // &
    case 124: // |
    case 96: // `
    case 63: // ?
      return true;
    default:
      return false;
  }
}

function isPunct(c: number): boolean {
  // ( ) , ; [ ]   ('.' and ':' are handled apart: '..', '::', ':=')
  return c === 40 || c === 41 || c === 44 || c === 59 || c === 91 || c === 93;
}

/** ASCII-only lower-casing, as PostgreSQL does for identifiers in multibyte encodings. */
export function downcaseIdentifier(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 65 && c <= 90) return asciiLower(s);
  }
  return s;
}

function asciiLower(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out += c >= 65 && c <= 90 ? String.fromCharCode(c + 32) : s[i];
  }
  return out;
}

/** Cuts a name to 63 UTF-8 bytes without splitting a character, as PostgreSQL does (with a NOTICE). */
export function truncateIdentifier(s: string): string {
  // A UTF-16 unit never needs more than 3 UTF-8 bytes.
  if (s.length * 3 <= MAX_IDENTIFIER_BYTES) return s;
  let bytes = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    let width: number;
    let units = 1;
    if (c < 0x80) width = 1;
    else if (c < 0x800) width = 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        width = 4;
        units = 2;
      } else width = 3;
    } else width = 3;
    if (bytes + width > MAX_IDENTIFIER_BYTES) return s.slice(0, i);
    bytes += width;
    i += units - 1;
  }
  return s;
}

function token(kind: TokenKind, value: string, start: number, end: number): Token {
  return { kind, value, start, end };
}

/** Index of the next LF or CR at or after i, or s.length: where a -- comment stops. */
function lineEnd(s: string, i: number): number {
  const n = s.length;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c === LF || c === CR) return i;
    i++;
  }
  return n;
}

/**
 * End (exclusive) of the block comment opening at i, or -1 when unterminated.
 * Block comments nest, unlike in the SQL standard's older C-style reading.
 */
function blockCommentEnd(s: string, i: number): number {
  const n = s.length;
  let depth = 1;
  let j = i + 2;
  while (j < n) {
    const c = s.charCodeAt(j);
    if (c === SLASH && s.charCodeAt(j + 1) === STAR) {
      depth++;
      j += 2;
    } else if (c === STAR && s.charCodeAt(j + 1) === SLASH) {
      depth--;
      j += 2;
      if (depth === 0) return j;
    } else j++;
  }
  return -1;
}

/** Skips whitespace and complete comments from i; stops at an unterminated one. */
function skipBlanks(s: string, i: number): number {
  const n = s.length;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (isSpace(c)) i++;
    else if (c === MINUS && s.charCodeAt(i + 1) === MINUS) i = lineEnd(s, i + 2);
    else if (c === SLASH && s.charCodeAt(i + 1) === STAR) {
      const end = blockCommentEnd(s, i);
      if (end < 0) return i;
      i = end;
    } else break;
  }
  return i;
}

/**
 * Two string constants separated only by whitespace that includes a newline
 * (and -- comments, but not block comments) are one constant, continuing in
 * the first one's escape mode. Returns the index of the continuing quote, or -1.
 */
function continuationQuote(s: string, i: number): number {
  const n = s.length;
  let newline = false;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c === LF || c === CR) {
      newline = true;
      i++;
    } else if (isSpace(c)) i++;
    else if (c === MINUS && s.charCodeAt(i + 1) === MINUS) i = lineEnd(s, i + 2);
    else break;
  }
  return newline && s.charCodeAt(i) === SQUOTE ? i : -1;
}

/** True when s has the word w (lower-case ASCII) at i, not followed by an identifier character. */
function wordAt(s: string, i: number, w: string): boolean {
  if (i + w.length > s.length) return false;
  for (let k = 0; k < w.length; k++) {
    let c = s.charCodeAt(i + k);
    if (c >= 65 && c <= 90) c += 32;
    if (c !== w.charCodeAt(k)) return false;
  }
  return !isIdentCont(s.charCodeAt(i + w.length));
}

// How the body of a quoted string is read.
const QUOTE_MODE = {
  /** '...' with standard_conforming_strings on, N'...': only '' escapes a quote. */
  PLAIN: 0,
  /** E'...' (and '...' with standard_conforming_strings off): backslash escapes too. */
  ESCAPE: 1,
  /** U&'...': '' escapes, Unicode escapes decoded after UESCAPE is known. */
  UNICODE: 2,
  /** B'...' and X'...': no escapes at all, the first quote ends the body. */
  BITS: 3,
} as const;
type QuoteMode = (typeof QUOTE_MODE)[keyof typeof QUOTE_MODE];

/** What one backslash escape of an E'...' string denotes, and where reading resumes. */
type Escape =
  | { readonly type: 'text'; readonly text: string; readonly next: number }
  | { readonly type: 'byte'; readonly byte: number; readonly next: number }
  | { readonly type: 'codepoint'; readonly codePoint: number; readonly next: number }
  | { readonly type: 'error'; readonly message: string; readonly next: number };

function hexValue(c: number): number {
  if (isDigit(c)) return c - ZERO;
  if (c >= 65 && c <= 70) return c - 55;
  return c - 87;
}

function readHex(s: string, i: number, count: number): number {
  let v = 0;
  for (let k = 0; k < count; k++) {
    const c = s.charCodeAt(i + k);
    if (!isHexDigit(c)) return -1;
    v = v * 16 + hexValue(c);
  }
  return v;
}

function isOctalDigit(c: number): boolean {
  return c >= ZERO && c <= 55;
}

/** Reads the escape whose backslash is at i (i + 1 < s.length is guaranteed). */
function readEscape(s: string, i: number): Escape {
  const c = s.charCodeAt(i + 1);
  switch (c) {
    case 98: // b
      return { type: 'text', text: '\b', next: i + 2 };
    case 102: // f
      return { type: 'text', text: '\f', next: i + 2 };
    case 110: // n
      return { type: 'text', text: '\n', next: i + 2 };
    case 114: // r
      return { type: 'text', text: '\r', next: i + 2 };
    case 116: // t
      return { type: 'text', text: '\t', next: i + 2 };
    case 120: {
      // \xh or \xhh; with no hex digit it is just 'x'
      let j = i + 2;
      let v = 0;
      while (j < i + 4 && isHexDigit(s.charCodeAt(j))) {
        v = v * 16 + hexValue(s.charCodeAt(j));
        j++;
      }
      if (j === i + 2) return { type: 'text', text: 'x', next: j };
      return { type: 'byte', byte: v, next: j };
    }
    case 117: // \uXXXX
    case 85: {
      // \UXXXXXXXX
      const digits = c === 117 ? 4 : 8;
      const v = readHex(s, i + 2, digits);
      if (v < 0) return { type: 'error', message: 'invalid Unicode escape', next: i + 2 };
      return { type: 'codepoint', codePoint: v, next: i + 2 + digits };
    }
    default: {
      if (isOctalDigit(c)) {
        // \o, \oo, \ooo (kept to a byte, as PostgreSQL does)
        let j = i + 1;
        let v = 0;
        while (j < i + 4 && isOctalDigit(s.charCodeAt(j))) {
          v = v * 8 + (s.charCodeAt(j) - ZERO);
          j++;
        }
        return { type: 'byte', byte: v & 0xff, next: j };
      }
      // Any other character stands for itself, a quote included: this is
      // what makes E'\'' a one-character string.
      const cp = s.codePointAt(i + 1) ?? c;
      return { type: 'text', text: String.fromCodePoint(cp), next: i + 1 + (cp > 0xffff ? 2 : 1) };
    }
  }
}

/** Why a code point cannot be in a string, or null. */
function codePointError(v: number): string | null {
  if (v === 0 || v > 0x10ffff) return 'invalid Unicode escape value';
  return null;
}

const UTF8_DECODER = new TextDecoder('utf-8', { fatal: true });
const UTF8_ENCODER = new TextEncoder();

/**
 * Builds the value of an E'...' string. Octal and hex escapes denote bytes
 * of the database encoding (assumed UTF-8), so they are kept as bytes and
 * decoded together with the text around them when one is non-ASCII.
 * Each method answers an error message (what PostgreSQL would reject) or null.
 */
class EscapedValue {
  #parts: (string | number)[] = [];
  #highBytes = false;
  // A \uD800-\uDBFF escape must be followed at once by a low-half escape.
  #pendingHigh = -1;

  text(t: string): string | null {
    if (t === '') return null;
    if (this.#pendingHigh >= 0) return 'invalid Unicode surrogate pair';
    this.#parts.push(t);
    return null;
  }

  byte(b: number): string | null {
    if (this.#pendingHigh >= 0) return 'invalid Unicode surrogate pair';
    if (b === 0) return 'invalid null byte in string';
    if (b >= 0x80) this.#highBytes = true;
    this.#parts.push(b);
    return null;
  }

  codePoint(v: number): string | null {
    if (v >= 0xd800 && v <= 0xdbff) {
      if (this.#pendingHigh >= 0) return 'invalid Unicode surrogate pair';
      this.#pendingHigh = v;
      return null;
    }
    if (v >= 0xdc00 && v <= 0xdfff) {
      if (this.#pendingHigh < 0) return 'invalid Unicode surrogate pair';
      const cp = 0x10000 + ((this.#pendingHigh - 0xd800) << 10) + (v - 0xdc00);
      this.#pendingHigh = -1;
      this.#parts.push(String.fromCodePoint(cp));
      return null;
    }
    if (this.#pendingHigh >= 0) return 'invalid Unicode surrogate pair';
    const bad = codePointError(v);
    if (bad !== null) return bad;
    this.#parts.push(String.fromCodePoint(v));
    return null;
  }

  /** The decoded value, or an error when a surrogate half is left over or the bytes are not UTF-8. */
  finish(): { value: string; error: string | null } {
    if (this.#pendingHigh >= 0) return { value: '', error: 'invalid Unicode surrogate pair' };
    if (!this.#highBytes) {
      let out = '';
      for (const p of this.#parts) out += typeof p === 'number' ? String.fromCharCode(p) : p;
      return { value: out, error: null };
    }
    const bytes: number[] = [];
    for (const p of this.#parts) {
      if (typeof p === 'number') bytes.push(p);
      else for (const b of UTF8_ENCODER.encode(p)) bytes.push(b);
    }
    try {
      return { value: UTF8_DECODER.decode(new Uint8Array(bytes)), error: null };
    } catch {
      return { value: '', error: 'invalid byte sequence for encoding "UTF8"' };
    }
  }
}

/**
 * Decodes the Unicode escapes of a U&'...' or U&"..." body: the escape
 * character followed by 4 hex digits, or by '+' and 6 hex digits; the escape
 * character twice is itself. Returns null when an escape is malformed.
 */
function decodeUnicodeEscapes(body: string, esc: number): string | null {
  let out = '';
  let pendingHigh = -1;
  let i = 0;
  while (i < body.length) {
    const c = body.charCodeAt(i);
    if (c !== esc) {
      if (pendingHigh >= 0) return null;
      out += body[i];
      i++;
      continue;
    }
    if (body.charCodeAt(i + 1) === esc) {
      if (pendingHigh >= 0) return null;
      out += body[i];
      i += 2;
      continue;
    }
    let v: number;
    if (body.charCodeAt(i + 1) === PLUS) {
      v = readHex(body, i + 2, 6);
      i += 8;
    } else {
      v = readHex(body, i + 1, 4);
      i += 5;
    }
    if (v < 0) return null;
    if (v >= 0xd800 && v <= 0xdbff) {
      if (pendingHigh >= 0) return null;
      pendingHigh = v;
      continue;
    }
    if (v >= 0xdc00 && v <= 0xdfff) {
      if (pendingHigh < 0) return null;
      out += String.fromCodePoint(0x10000 + ((pendingHigh - 0xd800) << 10) + (v - 0xdc00));
      pendingHigh = -1;
      continue;
    }
    if (pendingHigh >= 0 || codePointError(v) !== null) return null;
    out += String.fromCodePoint(v);
  }
  return pendingHigh >= 0 ? null : out;
}

/** Characters UESCAPE may not name. */
function badUescapeChar(c: number): boolean {
  return isHexDigit(c) || c === PLUS || c === SQUOTE || c === DQUOTE || isSpace(c);
}

/** True when a digit of the radix is at i, possibly after one underscore. */
function radixDigitFollows(s: string, i: number, radix: number): boolean {
  let c = s.charCodeAt(i);
  if (c === UNDERSCORE) c = s.charCodeAt(i + 1);
  if (radix === 16) return isHexDigit(c);
  return c >= ZERO && c < ZERO + radix;
}

/** Produces the tokens of one SQL text, one at a time, skipping whitespace and comments. */
export class Lexer {
  readonly #s: string;
  readonly #plainMode: QuoteMode;
  #pos = 0;
  // The operator-character run being split into tokens (see #scanOperatorRun).
  #runEnd = -1;
  #runSpecial = false;
  #runLastUnsigned = -1;

  constructor(sql: string, options: LexOptions = {}) {
    this.#s = sql;
    this.#plainMode = options.standardConformingStrings === false ? QUOTE_MODE.ESCAPE : QUOTE_MODE.PLAIN;
  }

  /** The next token, or null at the end of the input. */
  next(): Token | null {
    const s = this.#s;
    const n = s.length;
    const start = skipBlanks(s, this.#pos);
    this.#pos = start;
    if (start >= n) return null;
    const c = s.charCodeAt(start);
    const c1 = s.charCodeAt(start + 1);

    if (c === SLASH && c1 === STAR) {
      // skipBlanks stopped here, so the comment is unterminated.
      this.#pos = n;
      return token(TOKEN.ERROR, 'unterminated /* comment', start, n);
    }
    if (isIdentStart(c)) {
      if (c1 === SQUOTE) {
        switch (c) {
          case 69: // E
          case 101: // e
            return this.#quoted(start, start + 2, QUOTE_MODE.ESCAPE);
          case 66: // B
          case 98: // b
          case 88: // X
          case 120: // x
            return this.#quoted(start, start + 2, QUOTE_MODE.BITS);
          case 78: // N: a national character string reads like a plain one
          case 110:
            return this.#quoted(start, start + 2, this.#plainMode);
        }
      } else if ((c === 85 || c === 117) && c1 === AMP) {
        const c2 = s.charCodeAt(start + 2);
        if (c2 === SQUOTE) return this.#quoted(start, start + 3, QUOTE_MODE.UNICODE);
        if (c2 === DQUOTE) return this.#quotedIdent(start, start + 3, true);
      }
      let i = start + 1;
      while (i < n && isIdentCont(s.charCodeAt(i))) i++;
      this.#pos = i;
      return token(TOKEN.IDENT, truncateIdentifier(downcaseIdentifier(s.slice(start, i))), start, i);
    }
    if (c === SQUOTE) return this.#quoted(start, start + 1, this.#plainMode);
    if (c === DQUOTE) return this.#quotedIdent(start, start + 1, false);
    if (c === DOLLAR) return this.#dollar(start);
    if (isDigit(c) || (c === DOT && isDigit(c1))) return this.#number(start);
    if (c === DOT) {
      if (c1 === DOT) return this.#fixed(TOKEN.OP, start, 2);
      return this.#fixed(TOKEN.PUNCT, start, 1);
    }
    if (c === COLON) {
      if (c1 === COLON || c1 === EQUALS) return this.#fixed(TOKEN.OP, start, 2);
      return this.#fixed(TOKEN.PUNCT, start, 1);
    }
    if (isPunct(c)) return this.#fixed(TOKEN.PUNCT, start, 1);
    if (isOpChar(c)) return this.#operator(start);
    // '{', '}', '\', control characters ...: PostgreSQL's grammar has no use for them.
    const width = c >= 0xd800 && c <= 0xdbff && start + 1 < n ? 2 : 1;
    this.#pos = start + width;
    return token(TOKEN.ERROR, `unexpected character ${JSON.stringify(s.slice(start, start + width))}`, start, start + width);
  }

  #fixed(kind: TokenKind, start: number, len: number): Token {
    this.#pos = start + len;
    return token(kind, this.#s.slice(start, start + len), start, start + len);
  }

  #operator(start: number): Token {
    const s = this.#s;
    if (start >= this.#runEnd) this.#scanOperatorRun(start);
    let end = this.#runEnd;
    // A multi-character operator cannot end in + or - unless it also holds
    // one of ~ ! @ # % ^ & | ` ?, so that "x=-1" reads as "x = -1" and "1++2"
    // as "1 + + 2": trailing signs go back to be read as operators of their own.
    if (!this.#runSpecial && end - start > 1) end = Math.max(start + 1, this.#runLastUnsigned + 1);
    this.#pos = end;
    return token(TOKEN.OP, s.slice(start, end), start, end);
  }

  /**
   * Measures the run of operator characters at start. Kept across calls
   * because a run that splits into several tokens (a long "+-+-...") is then
   * walked once, not once per token.
   */
  #scanOperatorRun(start: number): void {
    const s = this.#s;
    const n = s.length;
    let end = start + 1;
    while (end < n && isOpChar(s.charCodeAt(end))) {
      // A comment start inside the run ends the operator there.
      const c = s.charCodeAt(end);
      const d = s.charCodeAt(end + 1);
      if ((c === MINUS && d === MINUS) || (c === SLASH && d === STAR)) break;
      end++;
    }
    let special = false;
    let lastUnsigned = -1;
    for (let k = start; k < end; k++) {
      const c = s.charCodeAt(k);
      if (isOpSpecial(c)) special = true;
      if (c !== PLUS && c !== MINUS) lastUnsigned = k;
    }
    this.#runEnd = end;
    this.#runSpecial = special;
    this.#runLastUnsigned = lastUnsigned;
  }

  #number(start: number): Token {
    const s = this.#s;
    const n = s.length;
    let i = start;
    const c1 = s.charCodeAt(start + 1) | 0x20;
    // 0x..., 0o..., 0b... with optional underscores (PostgreSQL 16). Without
    // a digit after the prefix, read "0" alone, as older servers do: then
    // x'...' or b'...' right after it is still a bit string.
    const radix = c1 === 120 ? 16 : c1 === 111 ? 8 : c1 === 98 ? 2 : 0;
    if (s.charCodeAt(start) === ZERO && radix !== 0 && radixDigitFollows(s, start + 2, radix)) {
      i = start + 2;
      while (i < n && (isHexDigit(s.charCodeAt(i)) || s.charCodeAt(i) === UNDERSCORE)) i++;
    } else {
      while (i < n && (isDigit(s.charCodeAt(i)) || s.charCodeAt(i) === UNDERSCORE)) i++;
      // "1..5" is the integer 1 followed by '..', not 1. then .5
      if (s.charCodeAt(i) === DOT && s.charCodeAt(i + 1) !== DOT) {
        i++;
        while (i < n && (isDigit(s.charCodeAt(i)) || s.charCodeAt(i) === UNDERSCORE)) i++;
      }
      if ((s.charCodeAt(i) | 0x20) === 101) {
        let j = i + 1;
        if (s.charCodeAt(j) === PLUS || s.charCodeAt(j) === MINUS) j++;
        if (isDigit(s.charCodeAt(j))) {
          i = j;
          while (i < n && (isDigit(s.charCodeAt(i)) || s.charCodeAt(i) === UNDERSCORE)) i++;
        }
      }
    }
    this.#pos = i;
    return token(TOKEN.NUMBER, s.slice(start, i), start, i);
  }

  /** '$' starts a parameter ($1), a dollar-quoted string ($$...$$, $tag$...$tag$), or nothing valid. */
  #dollar(start: number): Token {
    const s = this.#s;
    const n = s.length;
    const c1 = s.charCodeAt(start + 1);
    if (isDigit(c1)) {
      let i = start + 1;
      while (i < n && isDigit(s.charCodeAt(i))) i++;
      this.#pos = i;
      return token(TOKEN.PARAM, s.slice(start, i), start, i);
    }
    let tagEnd = -1;
    if (c1 === DOLLAR) tagEnd = start + 1;
    else if (isIdentStart(c1)) {
      // A tag is like an identifier without '$'.
      let i = start + 2;
      while (i < n && (isIdentStart(s.charCodeAt(i)) || isDigit(s.charCodeAt(i)))) i++;
      if (s.charCodeAt(i) === DOLLAR) tagEnd = i;
    }
    if (tagEnd < 0) {
      this.#pos = start + 1;
      return token(TOKEN.ERROR, 'unexpected character "$"', start, start + 1);
    }
    // The body ends at the first exact (case-sensitive) repetition of the
    // opening delimiter; nothing inside is special.
    const delimiter = s.slice(start, tagEnd + 1);
    const bodyStart = tagEnd + 1;
    const close = s.indexOf(delimiter, bodyStart);
    if (close < 0) {
      this.#pos = n;
      return token(TOKEN.ERROR, 'unterminated dollar-quoted string', start, n);
    }
    this.#pos = close + delimiter.length;
    return token(TOKEN.STRING, s.slice(bodyStart, close), start, this.#pos);
  }

  /** A quoted string whose body starts at bodyStart (just after the opening quote). */
  #quoted(start: number, bodyStart: number, mode: QuoteMode): Token {
    const s = this.#s;
    const n = s.length;
    const escaped = mode === QUOTE_MODE.ESCAPE ? new EscapedValue() : null;
    let plain = '';
    let error: string | null = null;
    let i = bodyStart;
    for (;;) {
      // Read one segment up to its closing quote.
      if (escaped !== null) {
        let run = i;
        for (;;) {
          if (i >= n) return this.#unterminated(start);
          const c = s.charCodeAt(i);
          if (c === BACKSLASH) {
            if (i + 1 >= n) return this.#unterminated(start);
            if (i > run) error ??= escaped.text(s.slice(run, i));
            const e = readEscape(s, i);
            switch (e.type) {
              case 'text':
                error ??= escaped.text(e.text);
                break;
              case 'byte':
                error ??= escaped.byte(e.byte);
                break;
              case 'codepoint':
                error ??= escaped.codePoint(e.codePoint);
                break;
              case 'error':
                error ??= e.message;
                break;
              default:
                e satisfies never;
            }
            i = e.next;
            run = i;
            continue;
          }
          if (c === SQUOTE) {
            if (i > run) error ??= escaped.text(s.slice(run, i));
            if (s.charCodeAt(i + 1) === SQUOTE) {
              error ??= escaped.text("'");
              i += 2;
              run = i;
              continue;
            }
            break;
          }
          i++;
        }
      } else {
        for (;;) {
          const q = s.indexOf("'", i);
          if (q < 0) return this.#unterminated(start);
          plain += s.slice(i, q);
          if (mode !== QUOTE_MODE.BITS && s.charCodeAt(q + 1) === SQUOTE) {
            plain += "'";
            i = q + 2;
            continue;
          }
          i = q;
          break;
        }
      }
      // i is at the closing quote of this segment.
      const next = continuationQuote(s, i + 1);
      if (next < 0) {
        this.#pos = i + 1;
        break;
      }
      i = next + 1;
    }

    let value: string;
    if (escaped !== null) {
      const r = escaped.finish();
      error ??= r.error;
      value = r.value;
    } else if (mode === QUOTE_MODE.UNICODE) {
      const esc = this.#uescape();
      if (esc < 0) return token(TOKEN.ERROR, 'invalid Unicode escape character', start, this.#pos);
      const v = decodeUnicodeEscapes(plain, esc);
      if (v === null) error ??= 'invalid Unicode escape';
      // PostgreSQL refuses U&'...' when backslashes also escape in plain strings.
      if (this.#plainMode === QUOTE_MODE.ESCAPE) error ??= 'unsafe use of string constant with Unicode escapes';
      value = v ?? '';
    } else value = plain;
    if (error !== null) return token(TOKEN.ERROR, error, start, this.#pos);
    return token(TOKEN.STRING, value, start, this.#pos);
  }

  /** A "quoted identifier" (or U&"..." when unicode) whose body starts at bodyStart. */
  #quotedIdent(start: number, bodyStart: number, unicode: boolean): Token {
    const s = this.#s;
    let name = '';
    let i = bodyStart;
    for (;;) {
      const q = s.indexOf('"', i);
      if (q < 0) {
        this.#pos = s.length;
        return token(TOKEN.ERROR, 'unterminated quoted identifier', start, s.length);
      }
      name += s.slice(i, q);
      if (s.charCodeAt(q + 1) === DQUOTE) {
        name += '"';
        i = q + 2;
        continue;
      }
      this.#pos = q + 1;
      break;
    }
    if (unicode) {
      const esc = this.#uescape();
      if (esc < 0) return token(TOKEN.ERROR, 'invalid Unicode escape character', start, this.#pos);
      const v = decodeUnicodeEscapes(name, esc);
      if (v === null) return token(TOKEN.ERROR, 'invalid Unicode escape', start, this.#pos);
      name = v;
    }
    if (name === '') return token(TOKEN.ERROR, 'zero-length delimited identifier', start, this.#pos);
    return token(TOKEN.QUOTED_IDENT, truncateIdentifier(name), start, this.#pos);
  }

  /**
   * After a U& token: an optional `UESCAPE 'c'` names the escape character
   * (default backslash). When present it is folded into the token (#pos moves
   * past it). Returns the character code, or -1 when UESCAPE is malformed.
   */
  #uescape(): number {
    const s = this.#s;
    const i = skipBlanks(s, this.#pos);
    if (!wordAt(s, i, 'uescape')) return BACKSLASH;
    const j = skipBlanks(s, i + 7);
    const c = s.charCodeAt(j + 1);
    if (s.charCodeAt(j) === SQUOTE && s.charCodeAt(j + 2) === SQUOTE && s.charCodeAt(j + 3) !== SQUOTE && !badUescapeChar(c)) {
      this.#pos = j + 3;
      return c;
    }
    this.#pos = i + 7;
    return -1;
  }

  #unterminated(start: number): Token {
    this.#pos = this.#s.length;
    return token(TOKEN.ERROR, 'unterminated quoted string', start, this.#s.length);
  }
}

/** All tokens of a SQL text. */
export function tokenize(sql: string, options: LexOptions = {}): Token[] {
  const lexer = new Lexer(sql, options);
  const out: Token[] = [];
  for (let t = lexer.next(); t !== null; t = lexer.next()) out.push(t);
  return out;
}

function isWord(t: Token | null, w: string): boolean {
  return t !== null && t.kind === TOKEN.IDENT && t.value === w;
}

function isPunctTok(t: Token | null, p: string): boolean {
  return t !== null && t.kind === TOKEN.PUNCT && t.value === p;
}

/**
 * Decides, token by token, which ';' ends a statement.
 *
 * A ';' ends a statement unless it is inside parentheses (the action list of
 * CREATE RULE ... DO (a; b) holds statements) or inside the body of a
 * SQL-standard routine, `CREATE [OR REPLACE] FUNCTION|PROCEDURE ... BEGIN
 * ATOMIC ... END` (PostgreSQL 14+). Inside such a body, CASE ... END pairs at
 * parenthesis depth 0 are counted so that a CASE's END does not close it.
 * Dollar-quoted bodies need nothing here: the lexer already made them one
 * string token.
 */
export class StatementSplitter {
  #count = 0;
  #createSeen = false;
  #orReplace = false;
  #routine = false;
  #parens = 0;
  #strayClose = false;
  #body = 0;
  #prev: Token | null = null;

  /**
   * Feeds the next token of the text. Returns true when it is a ';' ending
   * the current statement; the caller then reads `malformed` and calls reset().
   */
  push(t: Token): boolean {
    if (t.kind === TOKEN.PUNCT && t.value === ';' && this.#parens === 0 && this.#body === 0) return true;
    const index = this.#count++;
    if (index === 0) this.#createSeen = isWord(t, 'create');
    else if (this.#createSeen && !this.#routine && index <= 3) this.#routinePrefix(t, index);
    if (t.kind === TOKEN.PUNCT) {
      if (t.value === '(') this.#parens++;
      else if (t.value === ')') {
        if (this.#parens > 0) this.#parens--;
        else this.#strayClose = true;
      }
    } else if (this.#routine && this.#parens === 0 && t.kind === TOKEN.IDENT) {
      const prev = this.#prev;
      // "t.end" and "AS end" use END as a name, not a keyword.
      const asName = isPunctTok(prev, '.') || isWord(prev, 'as');
      if (this.#body === 0) {
        if (t.value === 'atomic' && isWord(prev, 'begin')) this.#body = 1;
      } else if (!asName) {
        if (t.value === 'case') this.#body++;
        else if (t.value === 'end') this.#body--;
      }
    }
    this.#prev = t;
    return false;
  }

  // CREATE [OR REPLACE] FUNCTION|PROCEDURE
  #routinePrefix(t: Token, index: number): void {
    const routineWord = isWord(t, 'function') || isWord(t, 'procedure');
    if (index === 1) {
      if (routineWord) this.#routine = true;
      else this.#orReplace = isWord(t, 'or');
    } else if (index === 2) this.#orReplace &&= isWord(t, 'replace');
    else if (this.#orReplace && routineWord) this.#routine = true;
  }

  /** The statement so far has an unclosed '(' or BEGIN ATOMIC body, or a ')' that closes nothing. */
  get malformed(): boolean {
    return this.#parens > 0 || this.#body > 0 || this.#strayClose;
  }

  /** Starts a new statement. */
  reset(): void {
    this.#count = 0;
    this.#createSeen = false;
    this.#orReplace = false;
    this.#routine = false;
    this.#parens = 0;
    this.#strayClose = false;
    this.#body = 0;
    this.#prev = null;
  }
}

export interface StatementSpan {
  /** Offset of the statement's first token. */
  readonly start: number;
  /** Offset after its last token (the terminating ';' excluded). */
  readonly end: number;
}

/**
 * Spans of the statements of a SQL text, in order. Statements with no token
 * (between ";;", or only comments) are left out, as PostgreSQL ignores them;
 * text with no token at all gives an empty list.
 */
export function splitStatements(sql: string, options: LexOptions = {}): StatementSpan[] {
  const lexer = new Lexer(sql, options);
  const splitter = new StatementSplitter();
  const out: StatementSpan[] = [];
  let start = -1;
  let end = -1;
  for (let t = lexer.next(); t !== null; t = lexer.next()) {
    if (splitter.push(t)) {
      if (start >= 0) out.push({ start, end });
      start = -1;
      splitter.reset();
      continue;
    }
    if (start < 0) start = t.start;
    end = t.end;
  }
  if (start >= 0) out.push({ start, end });
  return out;
}

// Masks in cache keys. A query text cannot hold NUL (wire strings are
// NUL-terminated, and describe() parses no text containing one), so these
// never collide with text copied from the source. A constant and a $n
// parameter get different keys, and so does a lexical error: a text PostgreSQL
// rejects never shares a cache entry with one it accepts.
const KEY_CONSTANT = '\u0000';
const KEY_ERROR = '\u0000!';

/**
 * The cache key of a text: its tokens as written, constants masked, any run of
 * whitespace and comments between two tokens reduced to one space. Two texts
 * with the same key differ only in constant values, whitespace and comments,
 * none of which changes the fingerprint or the normalized text.
 */
export function shapeKey(text: string): string {
  return plainShapeKey(text) ?? lexedShapeKey(text);
}

/** True when a key masks a constant (or an error): its text has literal values, so it will rarely come back verbatim. */
export function keyHasConstant(key: string): boolean {
  return key.includes(KEY_CONSTANT);
}

/**
 * shapeKey's fast path, without tokens, for the common text made of
 * identifiers, integers, operators, punctuation and whitespace only (e.g.
 * "SELECT abalance FROM pgbench_accounts WHERE aid = 4711"): the same key
 * the lexer would give, or null when the text holds anything that needs the
 * lexer to tell where tokens end (quotes, $, comments, non-ASCII, a number
 * with a dot, an exponent, an underscore or a radix prefix, characters the
 * grammar has no use for).
 */
export function plainShapeKey(s: string): string | null {
  const n = s.length;
  let i = 0;
  while (i < n && isSpace(s.charCodeAt(i))) i++;
  let seg = i;
  let out = '';
  while (i < n) {
    const c = s.charCodeAt(i);
    if (isDigit(c)) {
      const before = s.charCodeAt(i - 1);
      // Digits after a letter, digit or _ belong to that identifier.
      if (i > 0 && isIdentCont(before)) {
        i++;
        continue;
      }
      if (before === DOT) return null;
      let j = i + 1;
      while (j < n && isDigit(s.charCodeAt(j))) j++;
      const after = s.charCodeAt(j);
      if (j < n && (isIdentCont(after) || after === DOT)) return null;
      out += s.slice(seg, i) + KEY_CONSTANT;
      seg = j;
      i = j;
      continue;
    }
    if (isSpace(c)) {
      let j = i + 1;
      while (j < n && isSpace(s.charCodeAt(j))) j++;
      if (j === n) return out + s.slice(seg, i);
      // One plain space between two tokens is already the key's separator.
      if (c !== SPACE || j !== i + 1) {
        out += `${s.slice(seg, i)} `;
        seg = j;
      }
      i = j;
      continue;
    }
    if (isIdentStart(c)) {
      if (c >= 0x80) return null;
    } else if (c === MINUS) {
      if (s.charCodeAt(i + 1) === MINUS) return null;
    } else if (c === SLASH) {
      if (s.charCodeAt(i + 1) === STAR) return null;
    } else if (!(isPunct(c) || isOpChar(c) || c === DOT || c === COLON)) return null;
    i++;
  }
  return out + s.slice(seg);
}

/** shapeKey by the lexer: any text. */
export function lexedShapeKey(text: string): string {
  const lexer = new Lexer(text);
  let out = '';
  let prevEnd = -1;
  for (let t = lexer.next(); t !== null; t = lexer.next()) {
    if (prevEnd >= 0 && t.start > prevEnd) out += ' ';
    prevEnd = t.end;
    if (t.kind === TOKEN.STRING || t.kind === TOKEN.NUMBER) out += KEY_CONSTANT;
    else if (t.kind === TOKEN.ERROR) out += KEY_ERROR;
    else out += text.slice(t.start, t.end);
  }
  return out;
}
