// The addon itself ships in the platform package; src/native.ts loads it from
// there. This module only carries the typings (native/index.d.ts).
export {};
