import PouchDB from 'pouchdb-browser';
import find from 'pouchdb-find';
PouchDB.plugin(find);
export default PouchDB;
