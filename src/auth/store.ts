// The authentication state loaded from files named in the config: hba rules,
// ident maps and the users file. One immutable snapshot; SIGHUP builds a new
// one and swaps it in, so sessions already past login are never affected.
// Errors carry file:line (never file contents beyond the hba/ident line, and
// never a users-file secret).

import { readFileSync } from 'node:fs';
import type { Config } from '../config/schema.ts';
import { formatAuthFileError, type HbaRule, parseHba } from './hba.ts';
import { type IdentMaps, parseIdent } from './ident.ts';
import { parseUsersFile, type StoredSecret } from './secrets.ts';

export interface AuthState {
  /** null: no hba_file, every client is relayed (passthrough). */
  hba: readonly HbaRule[] | null;
  ident: IdentMaps;
  users: ReadonlyMap<string, StoredSecret>;
}

export interface AuthLoadResult {
  state: AuthState;
  problems: Array<{ path: string; message: string }>;
}

function read(file: string, path: string, problems: AuthLoadResult['problems']): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    problems.push({ path, message: `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` });
    return null;
  }
}

export function loadAuthState(config: Config): AuthLoadResult {
  const problems: AuthLoadResult['problems'] = [];
  const a = config.auth;
  let hba: HbaRule[] | null = null;
  if (a.hba_file !== undefined) {
    const text = read(a.hba_file, 'auth.hba_file', problems);
    if (text !== null) {
      const r = parseHba(text, a.hba_file);
      for (const e of r.errors) problems.push({ path: 'auth.hba_file', message: formatAuthFileError(e) });
      hba = r.rules;
    } else {
      hba = [];
    }
  }
  let ident: IdentMaps = new Map();
  if (a.ident_file !== undefined) {
    const text = read(a.ident_file, 'auth.ident_file', problems);
    if (text !== null) {
      const r = parseIdent(text, a.ident_file);
      for (const e of r.errors) problems.push({ path: 'auth.ident_file', message: formatAuthFileError(e) });
      ident = r.maps;
    }
  }
  let users: ReadonlyMap<string, StoredSecret> = new Map();
  if (a.users_file !== undefined) {
    const text = read(a.users_file, 'auth.users_file', problems);
    if (text !== null) {
      const r = parseUsersFile(text, a.users_file);
      for (const e of r.errors) problems.push({ path: 'auth.users_file', message: e });
      users = r.users;
    }
  }
  if (hba !== null) {
    for (const rule of hba) {
      if (rule.options.map !== undefined && !ident.has(rule.options.map)) {
        problems.push({
          path: 'auth.hba_file',
          message: `${rule.fileName}:${rule.line}: map "${rule.options.map}" is not defined in auth.ident_file`,
        });
      }
    }
  }
  return { state: { hba, ident, users }, problems };
}
