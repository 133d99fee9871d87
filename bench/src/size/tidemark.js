// What an app imports from each library, bundled and minified to measure download size.
export { openReplica, deleteReplica } from '../../../js/index.js';
