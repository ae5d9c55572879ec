#!/usr/bin/env node
// CLI entry point: parse arguments, load and check the config, start Postern,
// and handle signals (SIGTERM/SIGINT: graceful shutdown).
//
//   postern --config FILE          run
//   postern check --config FILE    validate, list every problem, exit 1 if any
//   postern passwd USER           users-file line with a SCRAM verifier
//   postern demo                   throwaway PostgreSQL + TLS + Postern, prints a psql line
//   postern config-docs            print docs/configuration.md
//   postern --version | --help

import cluster from 'node:cluster';
import { parseArgs } from 'node:util';
import { loadAuthState } from './auth/store.ts';
import { renderConfigDocs } from './config/docs.ts';
import { loadConfigFile, workerCount } from './config/load.ts';
import { Postern } from './server.ts';
import { VERSION } from './version.ts';

const HELP = `postern ${VERSION}: a PostgreSQL-aware gateway

Usage:
  postern --config FILE          run with FILE (YAML)
  postern check --config FILE    validate FILE; lists every problem by key path
  postern passwd USER            print a users-file line with a SCRAM-SHA-256 verifier
                                 (password read without echo, or one line from stdin)
  postern demo                   start a throwaway PostgreSQL and Postern with TLS,
                                 and print a psql command that connects through it
  postern config-docs            print the configuration reference (markdown)
  postern --version              print the version
  postern --help                 print this help

Signals: SIGHUP reloads the authentication files and reloadable settings;
SIGTERM/SIGINT stop accepting, let sessions finish (limits.shutdown_timeout), then exit.
Docs: docs/configuration.md`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      version: { type: 'boolean', short: 'V' },
      help: { type: 'boolean', short: 'h' },
      port: { type: 'string' },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.version) {
    console.log(VERSION);
    return 0;
  }
  const command = positionals[0] ?? 'run';
  switch (command) {
    case 'config-docs':
      process.stdout.write(renderConfigDocs());
      return 0;
    case 'passwd': {
      const user = positionals[1];
      if (user === undefined || user === '') {
        console.error('postern: usage: postern passwd USER  (reads the password from the terminal without echo, or one line from stdin)');
        return 2;
      }
      const { readPasswordNoEcho, formatUsersFileLine } = await import('./auth/passwd.ts');
      const { makeVerifier, formatVerifier } = await import('./auth/scram.ts');
      const password = await readPasswordNoEcho(`Password for ${user}: `, process.stdin, process.stderr);
      if (password === '') {
        console.error('postern: empty password refused');
        return 1;
      }
      // One line for auth.users_file; the password itself is never printed.
      console.log(formatUsersFileLine(user, formatVerifier(await makeVerifier(password))));
      return 0;
    }
    case 'demo': {
      const { runDemo } = await import('./dev/demo.ts');
      return runDemo(values.port === undefined ? undefined : Number(values.port));
    }
    case 'check':
    case 'run': {
      if (values.config === undefined) {
        console.error(`postern: --config FILE is required\n\n${HELP}`);
        return 2;
      }
      const loaded = loadConfigFile(values.config);
      const problems = loaded.ok ? loadAuthState(loaded.config).problems : loaded.problems;
      if (!loaded.ok || problems.length > 0) {
        console.error(`postern: ${values.config}: ${problems.length} problem(s):`);
        for (const p of problems) console.error(`  ${p.path || '(file)'}: ${p.message}`);
        return 1;
      }
      if (command === 'check') {
        console.log(`postern: ${values.config}: OK (${Object.keys(loaded.config.databases).length} database(s))`);
        return 0;
      }
      if (cluster.isWorker) {
        const { runWorker } = await import('./cluster/worker.ts');
        await runWorker(loaded.config, values.config);
        return 0;
      }
      const workers = workerCount(loaded.config);
      if (workers > 1) {
        const { Primary } = await import('./cluster/primary.ts');
        const primary = new Primary(loaded.config, workers, undefined, values.config);
        await primary.start();
        process.on('SIGHUP', () => primary.reload());
        const stop = (sig: string): void => {
          primary.log.info({ signal: sig }, 'shutting down');
          void primary.stop();
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
        await primary.stopped;
        return 0;
      }
      const postern = new Postern(loaded.config, { configFile: values.config });
      await postern.listen();
      await new Promise<void>((resolve) => {
        // SHUTDOWN from the admin console ends the process as SIGTERM does.
        postern.stopped.then(resolve, resolve);
        const stop = (sig: string) => {
          postern.log.info({ signal: sig }, 'shutting down');
          postern.shutdown().then(resolve, resolve);
        };
        process.on('SIGHUP', () => {
          const problems = postern.reload(values.config);
          if (problems.length > 0) postern.log.warn({ problems }, 'SIGHUP: reload refused, running configuration kept');
        });
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      });
      return 0;
    }
    default:
      console.error(`postern: unknown command "${command}"\n\n${HELP}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    console.error(`postern: ${err.message}`);
    process.exitCode = 1;
  },
);
