// Client credentials Postern checks logins against: the users file (PgBouncer
// userlist.txt format: `"name" "secret"` per line, `;` or `#` comments) with
// SCRAM-SHA-256 verifiers, MD5 hashes or, discouraged, plaintext passwords.
// A loaded file is an immutable snapshot: a reload swaps the whole map, so a
// rotation never touches sessions that already logged in.

import { readFileSync } from 'node:fs';
import { parseVerifier, type ScramVerifier } from './scram.ts';

export type StoredSecret =
  | { kind: 'scram'; verifier: ScramVerifier }
  | { kind: 'md5'; hash: string }
  | { kind: 'password'; password: string };

export interface UsersFileResult {
  users: Map<string, StoredSecret>;
  errors: string[];
}

const MD5_RE = /^md5[0-9a-f]{32}$/;

/** Classifies one stored secret string. */
export function classifySecret(s: string): StoredSecret | null {
  if (s.startsWith('SCRAM-SHA-256$')) {
    const v = parseVerifier(s);
    return v === null ? null : { kind: 'scram', verifier: v };
  }
  if (MD5_RE.test(s)) return { kind: 'md5', hash: s };
  if (s === '') return null;
  return { kind: 'password', password: s };
}

/** Splits a line into double-quoted tokens (`""` is a literal quote). */
function quotedTokens(line: string): string[] | null {
  const out: string[] = [];
  let i = 0;
  while (i < line.length) {
    const c = line[i];
    if (c === ' ' || c === '\t') {
      i++;
      continue;
    }
    // A comment may follow the tokens.
    if (c === ';' || c === '#') break;
    if (c !== '"') return null;
    let tok = '';
    i++;
    for (;;) {
      if (i >= line.length) return null;
      if (line[i] === '"') {
        if (line[i + 1] === '"') {
          tok += '"';
          i += 2;
          continue;
        }
        i++;
        break;
      }
      tok += line[i];
      i++;
    }
    out.push(tok);
  }
  return out;
}

export function parseUsersFile(text: string, fileName: string): UsersFileResult {
  const users = new Map<string, StoredSecret>();
  const errors: string[] = [];
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, idx) => {
    const line = raw.trim();
    if (line === '' || line.startsWith(';') || line.startsWith('#')) return;
    const toks = quotedTokens(line);
    // Errors name the line, never its content: it holds a secret.
    if (toks === null || toks.length < 2 || toks[0] === '') {
      errors.push(`${fileName}:${idx + 1}: expected "user" "secret"`);
      return;
    }
    const secret = classifySecret(toks[1] as string);
    if (secret === null) {
      errors.push(
        `${fileName}:${idx + 1}: unrecognized secret for user "${toks[0]}" (expected a SCRAM-SHA-256 verifier, an md5 hash or a password)`,
      );
      return;
    }
    users.set(toks[0] as string, secret);
  });
  return { users, errors };
}

export function loadUsersFile(path: string): UsersFileResult {
  return parseUsersFile(readFileSync(path, 'utf8'), path);
}
