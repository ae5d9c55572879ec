// The logic behind `postern passwd`: read a password without echoing it (or
// one line from a pipe, so `echo pw | postern passwd alice` can be scripted),
// and format a users-file line in PgBouncer's userlist.txt style:
//   "alice" "SCRAM-SHA-256$4096:..."
// Wiring into the CLI lives in src/main.ts.

import type { Readable, Writable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { PosternError } from '../errors.ts';

/** A readable that may be a terminal (process.stdin is a tty.ReadStream when it is). */
export type PasswordInput = Readable & { isTTY?: boolean; isRaw?: boolean; setRawMode?: (mode: boolean) => unknown };

export class PasswordInputError extends PosternError {
  constructor(message: string) {
    super(message, 'ERR_PASSWORD_INPUT');
    this.name = 'PasswordInputError';
  }
}

/**
 * Reads a password. On a TTY: prints `prompt` to `output`, switches the
 * terminal to raw mode so nothing is echoed, and reads until Enter
 * (Backspace and Ctrl-U edit; Ctrl-C and Ctrl-D on an empty line abort).
 * Otherwise: reads one line (without its line ending) and prints no prompt;
 * bytes after that line are pushed back onto the stream.
 */
export function readPasswordNoEcho(
  prompt: string,
  input: PasswordInput = process.stdin,
  output: Writable = process.stderr,
): Promise<string> {
  return input.isTTY && typeof input.setRawMode === 'function' ? readFromTerminal(prompt, input, output) : readLine(input);
}

function readFromTerminal(prompt: string, input: PasswordInput, output: Writable): Promise<string> {
  return new Promise((resolve, reject) => {
    const wasRaw = input.isRaw === true;
    const decoder = new StringDecoder('utf8');
    let chars: string[] = [];
    const finish = (err: Error | null): void => {
      input.off('data', onData);
      input.off('end', onEnd);
      input.off('error', onError);
      input.setRawMode?.(wasRaw);
      input.pause();
      // Enter was not echoed either; end the prompt line ourselves.
      output.write('\n');
      if (err) reject(err);
      else resolve(chars.join(''));
    };
    const onData = (chunk: Buffer | string): void => {
      const text = typeof chunk === 'string' ? chunk : decoder.write(chunk);
      for (const ch of text) {
        switch (ch) {
          case '\r':
          case '\n':
            finish(null);
            return;
          case '\u0003': // Ctrl-C: raw mode swallowed the signal, so abort here.
            finish(new PasswordInputError('interrupted'));
            return;
          case '\u0004': // Ctrl-D
            if (chars.length === 0) {
              finish(new PasswordInputError('no password given (end of input)'));
              return;
            }
            break;
          case '\u007f': // Backspace (DEL) and Ctrl-H
          case '\b':
            chars.pop();
            break;
          case '\u0015': // Ctrl-U: kill line
            chars = [];
            break;
          default:
            // Other control characters (arrow key sequences start with ESC) are not part of a password.
            if (ch >= ' ' && ch !== '\u007f') chars.push(ch);
        }
      }
    };
    const onEnd = (): void => finish(new PasswordInputError('no password given (end of input)'));
    const onError = (err: Error): void => finish(err);
    output.write(prompt);
    input.setRawMode?.(true);
    input.on('data', onData);
    input.once('end', onEnd);
    input.once('error', onError);
    input.resume();
  });
}

function readLine(input: Readable): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let seen = false;
    const finish = (err: Error | null, line?: Buffer, rest?: Buffer): void => {
      input.off('data', onData);
      input.off('end', onEnd);
      input.off('error', onError);
      input.pause();
      if (rest && rest.length > 0) input.unshift(rest);
      if (err) {
        reject(err);
        return;
      }
      let text = (line ?? Buffer.alloc(0)).toString('utf8');
      if (text.endsWith('\r')) text = text.slice(0, -1);
      resolve(text);
    };
    const onData = (chunk: Buffer | string): void => {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
      seen = true;
      const nl = buf.indexOf(0x0a);
      if (nl < 0) {
        chunks.push(buf);
        return;
      }
      chunks.push(buf.subarray(0, nl));
      finish(null, Buffer.concat(chunks), buf.subarray(nl + 1));
    };
    // A last line without a newline still counts; no input at all does not.
    const onEnd = (): void =>
      seen ? finish(null, Buffer.concat(chunks)) : finish(new PasswordInputError('no password given (end of input)'));
    const onError = (err: Error): void => finish(err);
    input.on('data', onData);
    input.once('end', onEnd);
    input.once('error', onError);
    input.resume();
  });
}

function quote(field: string, what: string): string {
  // One entry per line: a line break would split it, and PostgreSQL names cannot hold NUL.
  if (/[\r\n\0]/.test(field)) throw new TypeError(`${what} must not contain line breaks or NUL`);
  return `"${field.replace(/"/g, '""')}"`;
}

/** `"user" "verifier"`, each double-quoted with embedded quotes doubled (PgBouncer userlist.txt). */
export function formatUsersFileLine(user: string, verifier: string): string {
  if (user === '') throw new TypeError('user name must not be empty');
  return `${quote(user, 'user name')} ${quote(verifier, 'verifier')}`;
}
